//! All integration tests, in one test binary (ripgrep style). One module per area.

mod harness;
