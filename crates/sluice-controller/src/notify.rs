//! Notifications: each transition of a release (its record's timeline in `status.release`) sent to
//! the sinks of the namespace's ConfigMap `sluice-notifications` that want it, in the format each
//! asks for, outside the reconcile.
//!
//! The timeline is the outbox: it is written with the status that records the transition, so no
//! transition is missed. How far each sink got is kept on the release's `Release` record (the
//! annotation `sluice.dev/notified`), so a restart never sends a transition again; every
//! notification carries a dedupe key (`<rollout uid>-<release>-<entry>`) for receivers that see one
//! twice (a crash between a send and its record). A sink that cannot be reached is tried three times
//! and then reported (a `NotificationFailed` Event on the Rollout); it never delays a release, whose
//! reconcile only hands the Rollout over and goes on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use sluice_analysis::hook::{CallOutcome, Post, post};
use sluice_analysis::{AddressPolicy, Redactions};
use sluice_api::notification::{CONFIG_MAP, Format, NOTIFIED_ANNOTATION, Sink, Trigger};
use sluice_api::release::{Release, ReleaseProgress, TIMELINE_HEAD, TimelineEntry};
use sluice_api::rollout::Rollout;

use crate::Publisher;
use crate::cache::Caches;

/// How long one send may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Sends of one notification before it is reported as failed.
const ATTEMPTS: usize = 3;
/// The key of the annotation's count of transitions handled for every sink.
const ALL_SINKS: &str = "*";

/// A Rollout, by namespace and name.
type RolloutKey = (String, String);

/// How many of a release's timeline entries each sink has had (sent, or not wanted).
type Marks = BTreeMap<String, usize>;

#[derive(Default)]
struct Delivery {
    /// A task is sending this Rollout's notifications.
    running: bool,
    /// More came while it ran: it looks again before it stops.
    again: bool,
    /// The release whose marks these are, and the marks (ahead of the record, whose write may lag).
    marks: Option<(i64, Marks)>,
    /// Problems with the sinks already reported (an Event each, once).
    reported: BTreeSet<String>,
    /// A release that `status.release` no longer holds, with transitions still to send.
    replaced: Option<ReleaseProgress>,
    /// The release as last written (the cache may not have that write yet), while it has
    /// transitions to send.
    latest: Option<ReleaseProgress>,
    /// The record of the release before the first one offered was looked at (once per process).
    looked_back: bool,
    /// The number of a release replaced in the same write as the one offered, whose record is to
    /// be read (the cache keeps no timelines) for what was left to send.
    look_back: Option<i64>,
}

/// Sends the Rollouts' notifications.
#[derive(Clone)]
pub struct Notifier {
    client: Client,
    policy: Arc<AddressPolicy>,
    rollouts: Store<Rollout>,
    releases: Store<Release>,
    sinks: Store<ConfigMap>,
    /// The Secrets open to analysis (a sink's `urlFrom` and `tokenFrom`), if any may be read.
    secrets: Option<Store<Secret>>,
    events: Publisher,
    deliveries: Arc<Mutex<HashMap<RolloutKey, Delivery>>>,
}

impl Notifier {
    /// Forgets what was delivered for a deleted Rollout.
    pub fn forget(&self, namespace: &str, name: &str) {
        if let Ok(mut deliveries) = self.deliveries.lock() {
            deliveries.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }

    pub fn new(
        client: Client,
        policy: Arc<AddressPolicy>,
        caches: &Caches,
        events: Publisher,
    ) -> Self {
        Self {
            client,
            policy,
            rollouts: caches.rollouts.clone(),
            releases: caches.releases.clone(),
            sinks: caches.notification_sinks.clone(),
            secrets: caches.secrets.clone(),
            events,
            deliveries: Arc::default(),
        }
    }

    /// After a reconcile: sends the transitions of the Rollout's release (`status.release`, as
    /// just written, and the one it `replaced` in this write) that no sink has had yet, in the
    /// background. Costs nothing when there are none.
    pub fn offer(
        &self,
        rollout: &Rollout,
        namespace: &str,
        release: Option<&ReleaseProgress>,
        replaced: Option<&ReleaseProgress>,
    ) {
        if release.is_none() && replaced.is_none() {
            return;
        }
        let key = (namespace.to_owned(), rollout.name_any());
        let Ok(mut deliveries) = self.deliveries.lock() else {
            return;
        };
        let delivery = deliveries.entry(key.clone()).or_default();
        let pending = |release: &ReleaseProgress, delivery: &Delivery| {
            let handled = delivery
                .marks
                .as_ref()
                .filter(|(number, _)| *number == release.number)
                .map(|(_, marks)| marks.get(ALL_SINKS).copied().unwrap_or(0))
                .or_else(|| {
                    self.recorded(namespace, &key.1, release.number)
                        .and_then(|marks| marks.get(ALL_SINKS).copied())
                })
                .unwrap_or(0);
            handled < places(release)
        };
        // A release replaced in a status write whose process died before this call: the write
        // that replaced it was its last, so only its record (written before that status) holds
        // what was left to send. Looked for once, at the first offer after a start.
        let first = !std::mem::replace(&mut delivery.looked_back, true);
        if first
            && replaced.is_none()
            && let Some(release) = release
        {
            delivery.look_back = self.replaced_in_same_write(namespace, &key.1, release);
        }
        if let Some(replaced) = replaced
            && pending(replaced, delivery)
        {
            delivery.replaced = Some(replaced.clone());
        }
        match release.filter(|r| pending(r, delivery)) {
            Some(release) => delivery.latest = Some(release.clone()),
            None if delivery.replaced.is_none() && delivery.look_back.is_none() => return,
            None => {}
        }
        if delivery.running {
            delivery.again = true;
            return;
        }
        delivery.running = true;
        tokio::spawn(self.clone().deliver(key));
    }

    /// The number of the release before `current` if `current` replaced it in the same status
    /// write (its record, as cached, says it ended as `current` started) and its record does not
    /// say every sink had all of it.
    fn replaced_in_same_write(
        &self,
        namespace: &str,
        rollout: &str,
        current: &ReleaseProgress,
    ) -> Option<i64> {
        let number = current.number.checked_sub(1)?;
        let name = crate::release_record::name(rollout, number);
        let record = self
            .releases
            .get(&ObjectRef::new(&name).within(namespace))?;
        // (Compared in seconds, as the API server keeps times.)
        let ended = record
            .spec
            .release
            .ended_at
            .as_ref()
            .map(|t| t.0.as_second());
        (ended == Some(current.started_at.0.as_second())).then_some(number)
    }

    /// The release `number` of the Rollout as its record has it, timeline included (the cache
    /// keeps none), if any of its transitions may not have been handled.
    async fn unsent_release(
        &self,
        namespace: &str,
        rollout: &str,
        number: i64,
    ) -> Option<ReleaseProgress> {
        let name = crate::release_record::name(rollout, number);
        let api: Api<Release> = Api::namespaced(self.client.clone(), namespace);
        let record = match api.get_opt(&name).await {
            Ok(record) => record?,
            Err(err) => {
                tracing::warn!(%err, record = name, "could not read a replaced release's record");
                return None;
            }
        };
        let handled = record
            .annotations()
            .get(NOTIFIED_ANNOTATION)
            .and_then(|text| serde_json::from_str::<Marks>(text).ok())
            .and_then(|marks| marks.get(ALL_SINKS).copied())
            .unwrap_or(0);
        let release = record.spec.release;
        (handled < places(&release)).then_some(release)
    }

    /// The marks on the release's record, as the cache has it.
    fn recorded(&self, namespace: &str, rollout: &str, number: i64) -> Option<Marks> {
        let name = crate::release_record::name(rollout, number);
        let record = self
            .releases
            .get(&ObjectRef::new(&name).within(namespace))?;
        let text = record.annotations().get(NOTIFIED_ANNOTATION)?;
        serde_json::from_str(text).ok()
    }

    async fn deliver(self, key: RolloutKey) {
        // The sinks must be known before a transition is judged unwanted.
        let _ = self.sinks.wait_until_ready().await;
        // The fault tests' sink slower than a release.
        if let Some(held) = crate::failpoints::lag("notifications-held") {
            tokio::time::sleep(held).await;
        }
        loop {
            self.deliver_once(&key).await;
            let Ok(mut deliveries) = self.deliveries.lock() else {
                return;
            };
            let delivery = deliveries.entry(key.clone()).or_default();
            if std::mem::take(&mut delivery.again) {
                continue;
            }
            delivery.running = false;
            return;
        }
    }

    async fn deliver_once(&self, key: &RolloutKey) {
        let (namespace, name) = key;
        let Some(rollout) = self.rollouts.get(&ObjectRef::new(name).within(namespace)) else {
            // Deleted: nothing more to send for it.
            if let Ok(mut deliveries) = self.deliveries.lock() {
                deliveries.remove(key);
            }
            return;
        };
        // The releases as the reconcile wrote them: the cached Rollout may not show that write yet
        // (its spec and identity are all that is read from it).
        let (look_back, replaced, latest) = self
            .deliveries
            .lock()
            .ok()
            .and_then(|mut d| {
                let delivery = d.get_mut(key)?;
                Some((
                    delivery.look_back.take(),
                    delivery.replaced.take(),
                    delivery.latest.take(),
                ))
            })
            .unwrap_or_default();
        let looked_back = match look_back {
            Some(number) => self.unsent_release(namespace, name, number).await,
            None => None,
        };
        for release in looked_back.into_iter().chain(replaced).chain(latest) {
            self.deliver_release(&rollout, key, release).await;
        }
    }

    async fn deliver_release(
        &self,
        rollout: &Rollout,
        (namespace, name): &RolloutKey,
        release: ReleaseProgress,
    ) {
        let known = self
            .deliveries
            .lock()
            .ok()
            .and_then(|d| d.get(&(namespace.clone(), name.clone()))?.marks.clone())
            .filter(|(number, _)| *number == release.number)
            .map(|(_, marks)| marks);
        let before = known
            .or_else(|| self.recorded(namespace, name, release.number))
            .unwrap_or_default();
        let mut marks = before.clone();
        let (sinks, mut problems) = self.sinks_of(namespace);
        let subscribed = subscriptions(rollout, &sinks, &mut problems);
        let entries = entries(&release);
        for (sink_name, triggers) in &subscribed {
            let Some(sink) = sinks.get(sink_name) else {
                continue;
            };
            let from = marks.get(sink_name).copied().unwrap_or(0);
            let mut target: Option<Result<Target, String>> = None;
            for (index, entry) in entries.iter().enumerate().skip(from) {
                let wanted = entry.and_then(|entry| {
                    Trigger::of(&entry.reason, &entry.message)
                        .filter(|t| triggers.contains(t))
                        .map(|trigger| (entry, trigger))
                });
                if let Some((entry, trigger)) = wanted {
                    if target.is_none() {
                        target = Some(self.target(namespace, sink));
                    }
                    let outcome = match target.as_ref() {
                        Some(Ok(target)) => {
                            let note = Note {
                                rollout,
                                namespace,
                                release: &release,
                                index,
                                entry,
                                trigger,
                            };
                            self.send(target, sink.format, &note).await
                        }
                        Some(Err(problem)) => CallOutcome {
                            ok: false,
                            message: problem.clone(),
                        },
                        None => continue,
                    };
                    if !outcome.ok {
                        // The Event is read by whoever reads the Rollout: nothing from a Secret.
                        let said = match target.as_ref() {
                            Some(Ok(target)) => target.secret.redact(&outcome.message),
                            _ => outcome.message,
                        };
                        self.publish(
                            rollout,
                            "NotificationFailed",
                            &format!(
                                "notification {} of release {} not sent to sink {sink_name}: {said}",
                                trigger.as_str(),
                                release.number,
                            ),
                        );
                    }
                }
                marks.insert(sink_name.clone(), index + 1);
            }
        }
        marks.insert(ALL_SINKS.to_owned(), entries.len());
        self.report(rollout, namespace, name, problems);
        if let Ok(mut deliveries) = self.deliveries.lock() {
            deliveries
                .entry((namespace.clone(), name.clone()))
                .or_default()
                .marks = Some((release.number, marks.clone()));
        }
        // Recorded only where a sink is subscribed: namespaces without notifications write nothing.
        if !subscribed.is_empty() && marks != before {
            let record = crate::release_record::name(name, release.number);
            let patch = serde_json::json!({"metadata": {"annotations": {
                NOTIFIED_ANNOTATION: serde_json::to_string(&marks).unwrap_or_default()
            }}});
            let api: Api<Release> = Api::namespaced(self.client.clone(), namespace);
            if let Err(err) = api
                .patch(&record, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(%err, record, "could not record the notifications sent");
            }
        }
    }

    /// The namespace's sinks by name, and what is wrong with the others.
    fn sinks_of(&self, namespace: &str) -> (BTreeMap<String, Sink>, Vec<String>) {
        let mut sinks = BTreeMap::new();
        let mut problems = Vec::new();
        if let Some(config) = self
            .sinks
            .get(&ObjectRef::new(CONFIG_MAP).within(namespace))
        {
            for (name, text) in config.data.iter().flatten() {
                match Sink::parse(name, text) {
                    Ok(sink) => {
                        sinks.insert(name.clone(), sink);
                    }
                    Err(problem) => problems.push(problem),
                }
            }
        }
        (sinks, problems)
    }

    /// Reports each problem once (a warning Event on the Rollout).
    fn report(&self, rollout: &Rollout, namespace: &str, name: &str, problems: Vec<String>) {
        let fresh: Vec<String> = {
            let Ok(mut deliveries) = self.deliveries.lock() else {
                return;
            };
            let delivery = deliveries
                .entry((namespace.to_owned(), name.to_owned()))
                .or_default();
            let fresh = problems
                .iter()
                .filter(|p| !delivery.reported.contains(*p))
                .cloned()
                .collect();
            delivery.reported = problems.into_iter().collect();
            fresh
        };
        for problem in fresh {
            self.publish(rollout, "NotificationsInvalid", &problem);
        }
    }

    fn publish(&self, rollout: &Rollout, reason: &str, message: &str) {
        self.events
            .publish(&rollout.object_ref(&()), true, reason, reason, message);
    }

    /// Where a sink's notifications go, its Secrets read: each only where its Secret lets it go
    /// (a URL read from one, to a host its annotation allows; a token, to the URL's host).
    fn target(&self, namespace: &str, sink: &Sink) -> Result<Target, String> {
        let secrets = crate::analysis_run::SecretsIn {
            store: self.secrets.as_ref(),
            namespace,
        };
        let read = |from: &sluice_api::notification::FromSecret| {
            crate::analysis_run::read_secret(secrets, &from.secret_key_ref).map(|mut value| {
                value.text = value.text.trim().to_owned();
                value
            })
        };
        let mut secret = Redactions::default();
        let url = match (&sink.url, &sink.url_from) {
            (Some(url), _) => url.clone(),
            (None, Some(from)) => {
                let value = read(from)?;
                hide_url(&mut secret, &value.text);
                let host = crate::analysis_run::host_of(&value.text).unwrap_or_default();
                // The host is part of what the Secret holds: the problem does not name it.
                value.may_go_to(&host).map_err(|_| {
                    format!(
                        "the URL read from Secret {:?} goes to a host its annotation {} does not \
                         allow",
                        from.secret_key_ref.name,
                        sluice_api::names::SECRET_DESTINATIONS_ANNOTATION
                    )
                })?;
                value.text
            }
            (None, None) => return Err("the sink has no url".to_owned()),
        };
        let token = match &sink.token_from {
            Some(from) => {
                let value = read(from)?;
                secret.add(&value.text);
                let host = crate::analysis_run::host_of(&url).unwrap_or_default();
                value.may_go_to(&host).map_err(|problem| {
                    // A host read from a Secret stays hidden.
                    format!("token: {}", secret.redact(&problem))
                })?;
                Some(value.text)
            }
            None => None,
        };
        Ok(Target { url, token, secret })
    }

    /// Sends one notification, three times at most.
    async fn send(&self, target: &Target, format: Format, note: &Note<'_>) -> CallOutcome {
        let (document, content_type) = render(format, note);
        let mut headers = vec![("X-Sluice-Dedupe-Key".to_owned(), note.dedupe_key())];
        if let Some(token) = &target.token {
            headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
        }
        let request = Post {
            url: &target.url,
            document: &document,
            content_type,
            headers: &headers,
            timeout: SEND_TIMEOUT,
        };
        let once = || async {
            let outcome = post(&self.policy, &request).await;
            if outcome.ok {
                Ok(outcome)
            } else {
                Err(outcome)
            }
        };
        once.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_times(ATTEMPTS - 1),
        )
        .sleep(tokio::time::sleep)
        .await
        .unwrap_or_else(|failed| failed)
    }
}

struct Target {
    url: String,
    token: Option<String>,
    /// What came from Secrets (a URL and its pieces, a token), kept out of what a failure says: the
    /// address policy, the HTTP client and a refusing server all quote the URL or the request.
    secret: Redactions,
}

/// Hides a URL read from a Secret: whole, and each piece of it a message may quote apart (the host,
/// a path segment, a query value), but its scheme.
fn hide_url(secret: &mut Redactions, url: &str) {
    secret.add(url);
    for piece in url.split(['/', '?', '&', '=', '#', '@', ':']) {
        if piece.len() >= 4 && !matches!(piece, "http" | "https") {
            secret.add(piece);
        }
    }
}

/// One transition to announce.
struct Note<'a> {
    rollout: &'a Rollout,
    namespace: &'a str,
    release: &'a ReleaseProgress,
    /// Its place in the release's timeline, counting entries dropped from the middle.
    index: usize,
    entry: &'a TimelineEntry,
    trigger: Trigger,
}

impl Note<'_> {
    fn dedupe_key(&self) -> String {
        format!(
            "{}-{}-{}",
            self.rollout.uid().unwrap_or_default(),
            self.release.number,
            self.index
        )
    }
}

/// How many places a release's timeline has (its entries and those dropped from its middle).
fn places(release: &ReleaseProgress) -> usize {
    release.timeline.len() + usize::try_from(release.timeline_dropped).unwrap_or(0)
}

/// The entries of a release's timeline by their place in it: entries dropped from its middle (the
/// timeline keeps the first and the newest) keep their places as `None`, so a place is never given
/// to another entry.
fn entries(release: &ReleaseProgress) -> Vec<Option<&TimelineEntry>> {
    let dropped = usize::try_from(release.timeline_dropped).unwrap_or(0);
    let mut all = Vec::with_capacity(places(release));
    for (i, entry) in release.timeline.iter().enumerate() {
        if i == TIMELINE_HEAD {
            all.extend(std::iter::repeat_n(None, dropped));
        }
        all.push(Some(entry));
    }
    all
}

/// Each sink subscribed by the Rollout or its namespace, with the triggers it wants.
fn subscriptions(
    rollout: &Rollout,
    sinks: &BTreeMap<String, Sink>,
    problems: &mut Vec<String>,
) -> BTreeMap<String, BTreeSet<Trigger>> {
    let mut wanted: BTreeMap<String, BTreeSet<Trigger>> = BTreeMap::new();
    for (name, sink) in sinks {
        if !sink.on.is_empty() {
            wanted
                .entry(name.clone())
                .or_default()
                .extend(sink.on.iter().copied());
        }
    }
    for subscription in &rollout.spec.notifications {
        if !sinks.contains_key(&subscription.sink) {
            problems.push(format!(
                "spec.notifications: no sink {:?} in the ConfigMap {CONFIG_MAP} of this namespace",
                subscription.sink
            ));
            continue;
        }
        let on: Vec<Trigger> = if subscription.on.is_empty() {
            Trigger::ALL.to_vec()
        } else {
            subscription.on.clone()
        };
        wanted
            .entry(subscription.sink.clone())
            .or_default()
            .extend(on);
    }
    wanted
}

/// A notification in a sink's format, and its media type.
fn render(format: Format, note: &Note<'_>) -> (serde_json::Value, &'static str) {
    let name = note.rollout.name_any();
    let title = format!(
        "{}/{name}: release {} {}",
        note.namespace,
        note.release.number,
        note.trigger.as_str()
    );
    let document = serde_json::json!({
        "rollout": name,
        "namespace": note.namespace,
        "release": note.release.number,
        "revision": note.release.revision,
        "images": note.release.images,
        "trigger": note.trigger.as_str(),
        "reason": note.entry.reason,
        "message": note.entry.message,
        "at": note.entry.at,
        "by": note.entry.by,
        "dedupeKey": note.dedupe_key(),
    });
    match format {
        Format::Json => (document, "application/json"),
        Format::Slack => (
            serde_json::json!({"text": format!(
                "*{}*: {}",
                slack_escape(&title),
                slack_escape(&note.entry.message)
            )}),
            "application/json",
        ),
        Format::Teams => (
            serde_json::json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "text": markdown_escape(&title)},
                            {"type": "TextBlock", "wrap": true, "text": markdown_escape(&note.entry.message)}
                        ]
                    }
                }]
            }),
            "application/json",
        ),
        // CloudEvents 1.0 in structured mode: the attributes and the data in one JSON document.
        Format::Cloudevents => (
            serde_json::json!({
                "specversion": "1.0",
                "id": note.dedupe_key(),
                "source": format!(
                    "/apis/sluice.dev/v1alpha1/namespaces/{}/rollouts/{name}",
                    note.namespace
                ),
                "type": format!("dev.sluice.release.{}", note.trigger.as_str()),
                "subject": format!("release/{}", note.release.number),
                "time": note.entry.at,
                "datacontenttype": "application/json",
                "data": document,
            }),
            "application/cloudevents+json",
        ),
    }
}

/// Text as Slack's mrkdwn shows it literally: `&`, `<` and `>` escaped, so that a message quoting a
/// server (or a tenant's text) cannot mention `<!channel>` or make a link of its own.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text as Markdown (Teams' TextBlock) shows it literally: its punctuation escaped, so that a quoted
/// message cannot make a link, an image or emphasis.
fn markdown_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '`'
                | '*'
                | '_'
                | '{'
                | '}'
                | '['
                | ']'
                | '('
                | ')'
                | '#'
                | '+'
                | '-'
                | '.'
                | '!'
                | '<'
                | '>'
                | '|'
                | '~'
        ) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server text in a notification is shown, never obeyed: no mention, link or markup of its own.
    #[test]
    fn slack_and_markdown_output_escape_what_they_quote() {
        let quoted = "answered 500: <!channel> <http://evil.example|log in> [here](http://evil.example) & *now*";
        let slack = slack_escape(quoted);
        assert!(!slack.contains('<') && !slack.contains('>'), "{slack}");
        assert!(
            slack.contains("&lt;!channel&gt;") && slack.contains("&amp;"),
            "{slack}"
        );
        let markdown = markdown_escape(quoted);
        assert!(
            markdown.contains("\\[here\\]\\(http://evil\\.example\\)"),
            "{markdown}"
        );
        assert!(markdown.contains("\\*now\\*"), "{markdown}");
    }

    /// A sink's URL or token read from a Secret never shows in what a failure says, though the
    /// address policy, the URL parser and the HTTP client all quote the URL (before, the Event a
    /// tenant reads carried it).
    #[tokio::test]
    async fn a_failure_says_nothing_read_from_a_secret() {
        let policy = Arc::new(AddressPolicy::default());
        let document = serde_json::json!({});
        for url in [
            "http://hooks.internal.example:8080/services/T0/B0/s3cr3tpath?token=s3cr3t-token",
            "xoxb-s3cr3t-token-pasted-as-a-url",
        ] {
            let mut secret = Redactions::default();
            hide_url(&mut secret, url);
            secret.add("bearer-s3cr3t");
            let outcome = post(&policy, &Post::json(url, &document, SEND_TIMEOUT)).await;
            assert!(!outcome.ok);
            assert!(
                outcome.message.contains("s3cr3t"),
                "the raw message quotes it: {}",
                outcome.message
            );
            let said = secret.redact(&outcome.message);
            for piece in ["s3cr3t", "hooks.internal.example"] {
                assert!(!said.contains(piece), "{said}");
            }
            assert!(said.contains("***"), "{said}");
        }
    }
}
