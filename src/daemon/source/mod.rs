//! Where revisions come from: the git mirror and checkout, commit verification, and the triggers that ask for a fetch.

pub mod git;
pub mod verify;
pub mod watch;
pub mod webhook;
