//! `[alerts]`: who hears of failovers, switchovers, failbacks and replication trouble.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// The admins' addresses. Each report is journaled as a message and delivered like any
    /// other, through whichever site is active.
    pub to: Vec<String>,
    /// Envelope sender and From: of the reports; `levee@<smtp.hostname>` when absent.
    #[serde(default)]
    pub from: Option<String>,
}
