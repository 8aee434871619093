//! Arguments placed into a query: any template and any value fill in without panic, and a value
//! placed in a double-quoted string never ends it (the filled-in query has as many unescaped
//! quotes as the template).
//!
//! Input: the template, a NUL byte, then the value of `args.a`.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (template, value) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let template = String::from_utf8_lossy(template);
    let value = String::from_utf8_lossy(value);
    let values: BTreeMap<String, String> = [("args.a".to_owned(), value.into_owned())].into();
    let _ = sluice_analysis::substitute(&template, &values);
    // A template whose only string holds the placeholder: the value stays inside it.
    let quoted = format!("up{{job=\"{{{{args.a}}}}\"}}");
    if let Ok(query) = sluice_analysis::substitute(&quoted, &values) {
        assert_eq!(unescaped_quotes(&query), 2, "{query:?}");
    }
});

fn unescaped_quotes(text: &str) -> usize {
    let mut count = 0;
    let mut escaped = false;
    for c in text.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => count += 1,
            _ => {}
        }
    }
    count
}
