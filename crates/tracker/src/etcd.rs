//! A small blocking client of etcd's v3 API, through the JSON gateway every etcd server
//! serves on its client port (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/lease/grant`,
//! `/v3/lease/keepalive`, `/v3/watch`): keys and values travel in base64, 64-bit integers
//! as decimal strings. Only what the shared registry needs: ranges over a prefix,
//! compare-and-set writes, leases, and one watch read on a thread of its own.
//!
//! Why the gateway and not gRPC: the tracker is one mio loop with no async runtime; the
//! gateway needs only HTTP/1.1 and JSON, and each call here is one request and one reply.
//! Every call tries the endpoints in turn from the last one that answered, so a cluster
//! member going down costs one failed connection.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

/// The largest answer read (a range over 10,000 members is a few MB).
const MAX_ANSWER: u64 = 256 << 20;

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("no etcd endpoint answered ({0})")]
    Unreachable(String),
    /// An endpoint answered with something this client cannot read.
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
}

/// One key as etcd returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was written.
    Put(KeyValue),
    /// A key was deleted (by a request or with its lease); `prev` is what it held.
    Delete {
        /// The key.
        key: String,
        /// Its last value, lease included, when etcd still had it.
        prev: Option<KeyValue>,
        /// The revision of the deletion.
        revision: i64,
    },
}

/// A blocking etcd client over a list of endpoints (`http://host:port`).
#[derive(Debug, Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    /// Keeps a connection to each endpoint open between calls.
    agent: ureq::Agent,
    current: usize,
    /// Calls made (for the tracker's figures).
    pub calls: u64,
}

impl Etcd {
    /// A client of the cluster at `endpoints` (`host:port`, or full `http://` URLs); each
    /// call gives up on an endpoint after `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Self {
        Self {
            endpoints: endpoints.iter().map(|e| url_of(e)).collect(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                // A status is an answer to read, not a failed call.
                .http_status_as_error(false)
                .build()
                .into(),
            current: 0,
            calls: 0,
        }
    }

    /// The endpoints, as URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// One call: `body` to `path` at the first endpoint that answers.
    fn call(&mut self, path: &str, body: Value) -> Result<Value, EtcdError> {
        self.calls += 1;
        let mut failures = Vec::new();
        let body = body.to_string();
        for attempt in 0..self.endpoints.len() {
            let i = (self.current + attempt) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[i]);
            let answer = self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.as_str())
                .and_then(|mut response| {
                    let status = response.status().as_u16();
                    let body = response
                        .body_mut()
                        .with_config()
                        .limit(MAX_ANSWER)
                        .read_to_vec()?;
                    Ok((status, body))
                });
            match answer {
                Ok((200, body)) => {
                    self.current = i;
                    return serde_json::from_slice(&body)
                        .map_err(|e| EtcdError::Protocol(e.to_string()));
                }
                // A member that lost its quorum answers 503 ("etcdserver: no leader");
                // another member may have it.
                Ok((status, body)) if status >= 500 => failures.push(format!(
                    "{}: {status} {}",
                    self.endpoints[i],
                    String::from_utf8_lossy(&body)
                )),
                Ok((status, body)) => {
                    return Err(EtcdError::Protocol(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body)
                    )));
                }
                Err(e) => failures.push(format!("{}: {e}", self.endpoints[i])),
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// A new lease of `ttl`; its id.
    pub fn grant(&mut self, ttl: Duration) -> Result<i64, EtcdError> {
        let reply = self.call("/v3/lease/grant", json!({ "TTL": ttl.as_secs().max(1) }))?;
        int(&reply["ID"]).ok_or_else(|| EtcdError::Protocol(format!("lease grant: {reply}")))
    }

    /// Refreshes `lease`; false if it has expired (etcd answers a TTL of 0 or none).
    pub fn keep_alive(&mut self, lease: i64) -> Result<bool, EtcdError> {
        let reply = self.call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))?;
        Ok(int(&reply["result"]["TTL"]).is_some_and(|ttl| ttl > 0))
    }

    /// Every key under `prefix`, and the revision they were read at.
    pub fn range_prefix(&mut self, prefix: &str) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let reply = self.call(
            "/v3/kv/range",
            json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )?;
        let revision = int(&reply["header"]["revision"])
            .ok_or_else(|| EtcdError::Protocol(format!("range: {reply}")))?;
        let kvs = reply["kvs"]
            .as_array()
            .map(|a| a.iter().filter_map(key_value).collect())
            .unwrap_or_default();
        Ok((revision, kvs))
    }

    /// One key, if present.
    pub fn get(&mut self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let reply = self.call("/v3/kv/range", json!({ "key": B64.encode(key) }))?;
        Ok(reply["kvs"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(key_value))
    }

    /// Writes `key` only if its last change was at `expected` (0: only if absent), under
    /// `lease` (0: none). The revision written at, or `None` if the key had changed.
    pub fn put_if(
        &mut self,
        key: &str,
        value: &[u8],
        lease: i64,
        expected: i64,
    ) -> Result<Option<i64>, EtcdError> {
        let put = json!({ "request_put": {
            "key": B64.encode(key), "value": B64.encode(value), "lease": lease.to_string() } });
        self.txn_if(key, expected, put)
    }

    /// Deletes `key` only if its last change was at `expected`. The revision of the
    /// deletion, or `None` if the key had changed.
    pub fn delete_if(&mut self, key: &str, expected: i64) -> Result<Option<i64>, EtcdError> {
        let delete = json!({ "request_delete_range": { "key": B64.encode(key) } });
        self.txn_if(key, expected, delete)
    }

    fn txn_if(&mut self, key: &str, expected: i64, op: Value) -> Result<Option<i64>, EtcdError> {
        let reply = self.call(
            "/v3/kv/txn",
            json!({
                "compare": [{ "key": B64.encode(key), "target": "MOD", "result": "EQUAL",
                              "mod_revision": expected.to_string() }],
                "success": [op],
            }),
        )?;
        let revision = int(&reply["header"]["revision"])
            .ok_or_else(|| EtcdError::Protocol(format!("txn: {reply}")))?;
        Ok((reply["succeeded"] == Value::Bool(true)).then_some(revision))
    }

    /// Writes `key` unconditionally under `lease`; the revision written at.
    pub fn put(&mut self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let reply = self.call(
            "/v3/kv/put",
            json!({ "key": B64.encode(key), "value": B64.encode(value), "lease": lease.to_string() }),
        )?;
        int(&reply["header"]["revision"])
            .ok_or_else(|| EtcdError::Protocol(format!("put: {reply}")))
    }
}

/// Watches every key under `prefix` from revision `from` on a thread of its own, handing
/// each batch of events (one revision or more, in order) with the revision it reaches to
/// `deliver`, until `deliver` returns false. A broken stream is opened again at the next
/// endpoint, from the revision after the last one delivered, so nothing is missed or seen
/// twice.
pub fn watch(
    endpoints: Vec<String>,
    prefix: String,
    from: i64,
    mut deliver: impl FnMut(Vec<WatchEvent>, i64) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("etcd-watch".into())
        .spawn(move || {
            // No timeout: a quiet stream is not a dead one (etcd closes it if it dies).
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut next = from;
            let mut endpoint = 0;
            loop {
                let url = format!("{}/v3/watch", endpoints[endpoint % endpoints.len()]);
                let request = json!({ "create_request": {
                    "key": B64.encode(&prefix), "range_end": B64.encode(prefix_end(&prefix)),
                    "start_revision": next.to_string(), "prev_kv": true } });
                let opened = agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .send(request.to_string());
                match opened {
                    Ok(response) if response.status() == 200 => {
                        // One JSON object a line.
                        let reader = BufReader::new(response.into_body().into_reader());
                        for line in reader.lines() {
                            let Ok(line) = line else { break };
                            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                                continue;
                            };
                            let result = &value["result"];
                            let Some(events) = result["events"].as_array() else {
                                continue;
                            };
                            let revision = int(&result["header"]["revision"]).unwrap_or(next);
                            let events: Vec<WatchEvent> =
                                events.iter().filter_map(watch_event).collect();
                            let last = events
                                .iter()
                                .map(|e| match e {
                                    WatchEvent::Put(kv) => kv.mod_revision,
                                    WatchEvent::Delete { revision, .. } => *revision,
                                })
                                .max()
                                .unwrap_or(revision);
                            next = next.max(last + 1);
                            if !deliver(events, last) {
                                return;
                            }
                        }
                        log::info!("the etcd watch at {url} ended: opening it again");
                    }
                    Ok(response) => {
                        log::info!("etcd at {url} refused the watch: {}", response.status())
                    }
                    Err(e) => log::info!("cannot watch etcd at {url}: {e}"),
                }
                endpoint += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .expect("a thread can be spawned")
}

fn url_of(endpoint: &str) -> String {
    let trimmed = endpoint.trim().trim_end_matches('/');
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    }
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte
/// incremented.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// An int64 as the gateway writes it (a string), or a number.
fn int(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::String(s) => B64.decode(s).ok(),
        Value::Null => Some(Vec::new()),
        _ => None,
    }
}

fn key_value(value: &Value) -> Option<KeyValue> {
    Some(KeyValue {
        key: String::from_utf8(bytes(&value["key"])?).ok()?,
        value: bytes(&value["value"])?,
        mod_revision: int(&value["mod_revision"]).unwrap_or(0),
        lease: int(&value["lease"]).unwrap_or(0),
    })
}

fn watch_event(value: &Value) -> Option<WatchEvent> {
    let kv = &value["kv"];
    if value["type"] == "DELETE" {
        Some(WatchEvent::Delete {
            key: String::from_utf8(bytes(&kv["key"])?).ok()?,
            prev: key_value(&value["prev_kv"]),
            revision: int(&kv["mod_revision"]).unwrap_or(0),
        })
    } else {
        key_value(kv).map(WatchEvent::Put)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_of_a_prefix_ends_at_the_next_key() {
        assert_eq!(prefix_end("/gc/"), b"/gc0".to_vec());
        assert_eq!(url_of("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(url_of("http://h:1/"), "http://h:1");
    }

    #[test]
    fn watch_events_are_read_as_the_gateway_writes_them() {
        // As etcd 3.4's gateway wrote them (a put under a lease; its deletion with the lease
        // expiring).
        let put: Value = serde_json::from_str(
            r#"{"kv":{"key":"L2djL3k=","create_revision":"4","mod_revision":"4","version":"1","value":"eA==","lease":"41"}}"#,
        )
        .unwrap();
        let delete: Value = serde_json::from_str(
            r#"{"type":"DELETE","kv":{"key":"L2djL3k=","mod_revision":"5"},"prev_kv":{"key":"L2djL3k=","create_revision":"4","mod_revision":"4","version":"1","value":"eA==","lease":"41"}}"#,
        )
        .unwrap();
        let kv = KeyValue {
            key: "/gc/y".into(),
            value: b"x".to_vec(),
            mod_revision: 4,
            lease: 41,
        };
        assert_eq!(watch_event(&put), Some(WatchEvent::Put(kv.clone())));
        assert_eq!(
            watch_event(&delete),
            Some(WatchEvent::Delete {
                key: "/gc/y".into(),
                prev: Some(kv),
                revision: 5
            })
        );
    }
}
