//! A registry shared by several trackers: what one member's record looks like in the shared
//! store, and the changes a tracker writes there.
//!
//! The unit of sharing is the member: its record carries its address, identity, secret,
//! heartbeat interval and groups (each with its join stamp, and the group's order and seal
//! as this member joined it), so every tracker rebuilds the same groups from the members
//! alone, and every request changes exactly one record. A member is *held* by the tracker it
//! last talked to: that tracker watches its heartbeats and evicts it; the others keep a copy
//! of its record and take it over at its first request or heartbeat to them.

use proto::{GroupOrder, Member, Secret};
use serde::{Deserialize, Serialize};

/// One member as the shared store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedMember {
    /// Its name, id and address.
    pub member: Member,
    /// The heartbeat interval it is held to, in milliseconds.
    pub interval_ms: u64,
    /// Whether it speaks the newer protocol.
    pub newer: bool,
    /// The secret its requests must show (newer members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Its groups.
    #[serde(default)]
    pub groups: Vec<SharedGroup>,
    /// The tracker holding it (the one that wrote this record).
    #[serde(default)]
    pub tracker: String,
    /// Set on the record written just before it is deleted for an eviction, so that every
    /// tracker tells the members it holds.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evicted: bool,
}

/// One group of a [`SharedMember`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedGroup {
    /// The group's name.
    pub name: String,
    /// When the member joined, on the trackers' shared logical clock: a group lists its
    /// members by it (then by name).
    pub joined: u64,
    /// The group's delivery order, if declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<GroupOrder>,
    /// The token of the group's key, if sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Secret>,
}

/// A change of one member's record made by this tracker, to be written to the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The member's record is now this (it registered, joined, left a group, or this
    /// tracker took it over).
    Put(String, SharedMember),
    /// The member quit.
    Delete(String),
    /// The member was evicted here: written once with `evicted` set (so the other trackers
    /// tell their members), then deleted.
    Evicted(String, SharedMember),
}
