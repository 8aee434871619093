module sluice.dev/tests/probe

go 1.26
