//! Tracker control messages (TCP, and heartbeats also by UDP):
//! `{"Type": <int>, "Content": {...}}` requests and `{"Success": <bool>, "Content": ...}` replies.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{Error, check_len, classify, reject_array};

/// Default limit on one control request or reply, in bytes; requests are small, so anything
/// near this is a broken or hostile client.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// Longest username or group name, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a username or group name (`kind` says which) against the rules every program
/// applies: not empty, at most [`MAX_NAME_LEN`] characters, no control characters (they
/// would reach other people's terminals) and no white space (`in books john smith says::`
/// would not say who spoke). The error quotes at most the first 20 characters.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let shown = || {
        let mut head: String = name
            .chars()
            .take(20)
            .collect::<String>()
            .escape_debug()
            .to_string();
        if name.chars().count() > 20 {
            head.push('…');
        }
        format!("\"{head}\"")
    };
    let len = name.chars().count();
    if name.is_empty() {
        Err(format!("{kind} must not be empty"))
    } else if len > MAX_NAME_LEN {
        Err(format!(
            "{kind} {} is {len} characters long; at most {MAX_NAME_LEN} are allowed",
            shown()
        ))
    } else if name.chars().any(char::is_control) {
        Err(format!("{kind} {} contains control characters", shown()))
    } else if name.chars().any(char::is_whitespace) {
        Err(format!("{kind} {} contains white space", shown()))
    } else {
        Ok(())
    }
}

/// A registered member as the tracker lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// `Ip`: the IP address the member's UDP socket listens on.
    #[serde(rename = "Ip")]
    pub ip: String,
    /// `Port`: the member's UDP port.
    #[serde(rename = "Port")]
    pub port: u16,
    /// `Username`: the member's name, unique among live members.
    #[serde(rename = "Username")]
    pub username: String,
    /// `Uid`: the id the tracker gave the member on Register.
    #[serde(rename = "Uid")]
    pub uid: String,
}

/// The delivery order of a group, as newer peers declare it in JoinGroup (`"Order"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GroupOrder {
    /// `"fifo"`: each sender's messages in the order sent; members multicast to each other.
    #[serde(rename = "fifo")]
    Fifo,
    /// `"total"`: one sequence per group; members send to the sequencer and deliver only
    /// its stream.
    #[serde(rename = "total")]
    Total,
}

impl std::fmt::Display for GroupOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fifo => "FIFO order",
            Self::Total => "total order",
        })
    }
}

/// A control request to the tracker, one variant per `Type` code of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Type 1: the names of all groups.
    ListGroups,
    /// Type 2: join `group` (created if needed); the reply lists its members after the join.
    JoinGroup {
        /// Who joins.
        username: String,
        /// The group to join.
        group: String,
        /// `Order` (newer peers only): the delivery order the member uses. The first member
        /// to declare one sets the group's; a member declaring the other is refused, since
        /// members of different orders cannot hear each other.
        order: Option<GroupOrder>,
    },
    /// Type 3: register a member's UDP address; the reply is its unique id.
    Register {
        /// The IP address of the member's UDP socket.
        ip: String,
        /// The port of the member's UDP socket.
        port: u16,
        /// The member's name.
        username: String,
    },
    /// Type 4: the members of `group`.
    ListMembers {
        /// The group to list.
        group: String,
    },
    /// Type 5: leave `group`.
    ExitGroup {
        /// Who leaves.
        username: String,
        /// The group to leave.
        group: String,
    },
    /// Type 6: leave every group and unregister.
    Quit {
        /// Who quits (the username, or the member's id).
        username: String,
    },
    /// Type 7: a sign of life.
    Heartbeat {
        /// Who is alive.
        username: String,
    },
}

/// The envelope as received: `Content` is kept as unparsed JSON text until `Type` says what
/// it must hold, so it is parsed once, straight into its typed form.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(rename = "Type")]
    kind: i64,
    #[serde(rename = "Content", borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(rename = "Proto", default)]
    proto: Option<u32>,
    #[serde(rename = "Secret", default)]
    secret: Option<String>,
    #[serde(rename = "Seal", default)]
    seal: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct UserGroup {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Group")]
    group: String,
}

#[derive(Serialize, Deserialize)]
struct JoinContent {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Group")]
    group: String,
    #[serde(rename = "Order", default, skip_serializing_if = "Option::is_none")]
    order: Option<GroupOrder>,
}

#[derive(Serialize, Deserialize)]
struct RegisterContent {
    #[serde(rename = "Ip")]
    ip: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Username")]
    username: String,
}

#[derive(Serialize, Deserialize)]
struct GroupOnly {
    #[serde(rename = "Group")]
    group: String,
}

#[derive(Serialize, Deserialize)]
struct UserOnly {
    #[serde(rename = "Username")]
    username: String,
}

#[derive(Serialize)]
struct Wire<'a, C> {
    #[serde(rename = "Type")]
    kind: u8,
    #[serde(rename = "Content")]
    content: C,
    #[serde(rename = "Proto", skip_serializing_if = "Option::is_none")]
    proto: Option<u32>,
    #[serde(rename = "Secret", skip_serializing_if = "Option::is_none")]
    secret: Option<&'a str>,
    #[serde(rename = "Seal", skip_serializing_if = "Option::is_none")]
    seal: Option<&'a str>,
}

/// The secret the tracker gives a newer member at Register, which it shows in every later
/// request about itself (`Secret`, top-level): only the member can then join, leave, quit
/// or heartbeat as itself. Compared in constant time; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret made of `text` (the tracker makes it from at least 128 random bits).
    pub fn new(text: String) -> Self {
        Self(text)
    }

    /// The secret as it travels.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `shown` is this secret, compared in constant time (its length aside).
    pub fn matches(&self, shown: &Secret) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_bytes().ct_eq(shown.0.as_bytes()).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A request as it travels: the request, and the protocol version its client announced.
///
/// The top-level `Proto` key is the newer clients' mark (the report's tracker ignores extra
/// keys). It tells the tracker that the client keeps its connection open for more requests
/// (the report's client expects the tracker to close it after one reply), and, on Register,
/// that the member speaks the newer protocol and heartbeats at the tracker's interval
/// (members that do not are held to the report's 60 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The request.
    pub request: Request,
    /// `Proto`: the newer protocol version the client speaks, if it announced one.
    pub proto: Option<u32>,
    /// `Secret`: the member's proof that the request comes from it (see [`Secret`]).
    pub secret: Option<Secret>,
    /// `Seal` (JoinGroup and ListMembers of a sealed group): the proof that the client holds
    /// the group's key, a value derived from it (`seal::GroupKey::tracker_token`). The
    /// first member to join a group with one seals the group; from then on the tracker
    /// lets in, and shows the members to, only a client showing the same.
    pub seal: Option<Secret>,
}

impl Envelope {
    /// Decodes one request, rejecting input over `max` bytes before parsing.
    pub fn decode_limited(bytes: &[u8], max: usize) -> Result<Self, Error> {
        check_len(bytes, max)?;
        reject_array(bytes)?;
        let raw: RawRequest<'_> = serde_json::from_slice(bytes).map_err(classify)?;
        Ok(Self {
            request: Request::from_raw(raw.kind, raw.content)?,
            proto: raw.proto,
            secret: raw.secret.map(Secret),
            seal: raw.seal.map(Secret),
        })
    }

    /// Decodes one request, rejecting input over [`MAX_REQUEST_LEN`] before parsing.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Self::decode_limited(bytes, MAX_REQUEST_LEN)
    }

    /// Appends the JSON encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.request.encode_with(
            self.proto,
            self.secret.as_ref().map(Secret::as_str),
            self.seal.as_ref().map(Secret::as_str),
            out,
        );
    }

    /// The JSON encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(&mut out);
        out
    }
}

fn content<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    serde_json::from_value(value).map_err(classify)
}

/// Parses a request's `Content` into its typed form; absent content reads as `null`.
fn raw_content<T: DeserializeOwned>(raw: Option<&RawValue>) -> Result<T, Error> {
    serde_json::from_str(raw.map_or("null", RawValue::get)).map_err(classify)
}

impl Request {
    /// Registration of `username` receiving group datagrams at `addr`.
    pub fn register(addr: std::net::SocketAddr, username: impl Into<String>) -> Self {
        Self::Register {
            ip: addr.ip().to_string(),
            port: addr.port(),
            username: username.into(),
        }
    }

    /// The `Type` code of this request.
    pub fn code(&self) -> u8 {
        match self {
            Self::ListGroups => 1,
            Self::JoinGroup { .. } => 2,
            Self::Register { .. } => 3,
            Self::ListMembers { .. } => 4,
            Self::ExitGroup { .. } => 5,
            Self::Quit { .. } => 6,
            Self::Heartbeat { .. } => 7,
        }
    }

    /// Decodes one request, rejecting input over [`MAX_REQUEST_LEN`] before parsing; any
    /// `Proto` announcement is dropped (see [`Envelope`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Envelope::decode(bytes).map(|e| e.request)
    }

    fn from_raw(kind: i64, raw: Option<&RawValue>) -> Result<Self, Error> {
        Ok(match kind {
            // The report's client sends `{}`; any content is accepted and ignored.
            1 => Self::ListGroups,
            2 => {
                let c: JoinContent = raw_content(raw)?;
                Self::JoinGroup {
                    username: c.username,
                    group: c.group,
                    order: c.order,
                }
            }
            3 => {
                let c: RegisterContent = raw_content(raw)?;
                Self::Register {
                    ip: c.ip,
                    port: c.port,
                    username: c.username,
                }
            }
            4 => Self::ListMembers {
                group: raw_content::<GroupOnly>(raw)?.group,
            },
            5 => {
                let c: UserGroup = raw_content(raw)?;
                Self::ExitGroup {
                    username: c.username,
                    group: c.group,
                }
            }
            6 => Self::Quit {
                username: raw_content::<UserOnly>(raw)?.username,
            },
            7 => Self::Heartbeat {
                username: raw_content::<UserOnly>(raw)?.username,
            },
            code => return Err(Error::UnknownType { code }),
        })
    }

    /// Appends the JSON encoding (without a `Proto` key: the report's form) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        self.encode_with(None, None, None, out);
    }

    fn encode_with(
        &self,
        proto: Option<u32>,
        secret: Option<&str>,
        seal: Option<&str>,
        out: &mut Vec<u8>,
    ) {
        let kind = self.code();
        let result = match self {
            Self::ListGroups => serde_json::to_writer(
                out,
                &Wire {
                    kind,
                    content: serde_json::Map::new(),
                    proto,
                    secret,
                    seal,
                },
            ),
            Self::JoinGroup {
                username,
                group,
                order,
            } => serde_json::to_writer(
                out,
                &Wire {
                    kind,
                    content: JoinContent {
                        username: username.clone(),
                        group: group.clone(),
                        order: *order,
                    },
                    proto,
                    secret,
                    seal,
                },
            ),
            Self::ExitGroup { username, group } => serde_json::to_writer(
                out,
                &Wire {
                    kind,
                    content: UserGroup {
                        username: username.clone(),
                        group: group.clone(),
                    },
                    proto,
                    secret,
                    seal,
                },
            ),
            Self::Register { ip, port, username } => serde_json::to_writer(
                out,
                &Wire {
                    kind,
                    content: RegisterContent {
                        ip: ip.clone(),
                        port: *port,
                        username: username.clone(),
                    },
                    proto,
                    secret,
                    seal,
                },
            ),
            Self::ListMembers { group } => serde_json::to_writer(
                out,
                &Wire {
                    kind,
                    content: GroupOnly {
                        group: group.clone(),
                    },
                    proto,
                    secret,
                    seal,
                },
            ),
            Self::Quit { username } | Self::Heartbeat { username } => serde_json::to_writer(
                out,
                &Wire {
                    kind,
                    content: UserOnly {
                        username: username.clone(),
                    },
                    proto,
                    secret,
                    seal,
                },
            ),
        };
        result.expect("serializing a request into memory");
    }

    /// The JSON encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(&mut out);
        out
    }
}

/// The tracker's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// `Success`: whether the request was carried out.
    #[serde(rename = "Success")]
    pub success: bool,
    /// `Content`: the result (its shape depends on the request), or on failure a reason
    /// (a string; `[]` for ListMembers of an unknown group, as the report answers).
    #[serde(rename = "Content")]
    pub content: Value,
    /// `HeartbeatMs` (newer peers only, on Register): the heartbeat interval the tracker
    /// expects from this member.
    #[serde(
        rename = "HeartbeatMs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat_ms: Option<u64>,
    /// `Secret` (newer peers only, on Register): the member's secret, to show in every
    /// later request about itself.
    #[serde(rename = "Secret", default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
}

impl Reply {
    /// A successful reply carrying `content`.
    pub fn ok(content: impl Into<Value>) -> Self {
        Self {
            success: true,
            content: content.into(),
            heartbeat_ms: None,
            secret: None,
        }
    }

    /// A failed reply whose content is `reason`.
    pub fn failure(reason: impl Into<String>) -> Self {
        Self {
            success: false,
            content: Value::String(reason.into()),
            heartbeat_ms: None,
            secret: None,
        }
    }

    /// Decodes one reply, rejecting input over [`MAX_REQUEST_LEN`] before parsing.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        check_len(bytes, MAX_REQUEST_LEN)?;
        reject_array(bytes)?;
        serde_json::from_slice(bytes).map_err(classify)
    }

    /// The JSON encoding.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("serializing a reply into memory")
    }

    /// The content as a list of names (ListGroups).
    pub fn names(&self) -> Result<Vec<String>, Error> {
        content(self.content.clone())
    }

    /// The content as a list of members (JoinGroup, ListMembers).
    pub fn members(&self) -> Result<Vec<Member>, Error> {
        content(self.content.clone())
    }

    /// The content as text (the id after Register, or the reason of a failure).
    pub fn text(&self) -> Result<String, Error> {
        content(self.content.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_requests() -> Vec<Request> {
        vec![
            Request::ListGroups,
            Request::JoinGroup {
                username: "ford".into(),
                group: "books".into(),
                order: None,
            },
            Request::Register {
                ip: "127.0.0.1".into(),
                port: 5000,
                username: "ford".into(),
            },
            Request::ListMembers {
                group: "books".into(),
            },
            Request::ExitGroup {
                username: "ford".into(),
                group: "books".into(),
            },
            Request::Quit {
                username: "ford".into(),
            },
            Request::Heartbeat {
                username: "ford".into(),
            },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for request in all_requests() {
            assert_eq!(Request::decode(&request.encode()), Ok(request));
        }
    }

    #[test]
    fn a_join_declares_its_order_only_when_it_has_one() {
        let join = |order| Request::JoinGroup {
            username: "ford".into(),
            group: "books".into(),
            order,
        };
        let total = join(Some(GroupOrder::Total));
        let wire: Value = serde_json::from_slice(&total.encode()).expect("json");
        assert_eq!(wire["Content"]["Order"], "total");
        assert_eq!(Request::decode(&total.encode()).expect("decodes"), total);
        let plain: Value = serde_json::from_slice(&join(None).encode()).expect("json");
        assert!(plain["Content"].get("Order").is_none(), "the report's form");
        let odd = br#"{"Type": 2, "Content": {"Username": "a", "Group": "g", "Order": "causal"}}"#;
        assert!(Request::decode(odd).is_err());
    }

    #[test]
    fn requests_carry_the_report_type_codes_and_field_names() {
        let join: Value = serde_json::from_slice(
            &Request::JoinGroup {
                username: "ford".into(),
                group: "books".into(),
                order: None,
            }
            .encode(),
        )
        .expect("json");
        assert_eq!(
            join,
            serde_json::json!({"Type": 2, "Content": {"Username": "ford", "Group": "books"}})
        );
        let codes: Vec<u8> = all_requests().iter().map(Request::code).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn decodes_the_report_clients_indented_register() {
        let text = "{\n    \"Type\": 3,\n    \"Content\": {\n        \"Ip\": \"10.0.0.5\",\n        \"Port\": 6001,\n        \"Username\": \"katerina\"\n    }\n}";
        assert_eq!(
            Request::decode(text.as_bytes()),
            Ok(Request::Register {
                ip: "10.0.0.5".into(),
                port: 6001,
                username: "katerina".into(),
            })
        );
    }

    #[test]
    fn the_newer_clients_mark_travels_at_the_top_level_and_is_optional() {
        for request in all_requests() {
            let envelope = Envelope {
                request: request.clone(),
                proto: Some(2),
                secret: Some(Secret::new("s3cr3t".into())),
                seal: None,
            };
            let bytes = envelope.encode();
            let value: Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(value["Proto"], 2);
            assert_eq!(value["Secret"], "s3cr3t");
            assert!(
                !format!("{envelope:?}").contains("s3cr3t"),
                "Debug hides it"
            );
            assert_eq!(Envelope::decode(&bytes), Ok(envelope));
            assert_eq!(Request::decode(&bytes), Ok(request.clone()));
            assert_eq!(
                Envelope::decode(&request.encode()).map(|e| e.proto),
                Ok(None),
                "the report's form has no mark"
            );
        }
    }

    #[test]
    fn list_groups_accepts_any_or_no_content() {
        assert_eq!(Request::decode(br#"{"Type":1}"#), Ok(Request::ListGroups));
        assert_eq!(
            Request::decode(br#"{"Type":1,"Content":{}}"#),
            Ok(Request::ListGroups)
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert_eq!(
            Request::decode(br#"{"Type":9,"Content":{}}"#),
            Err(Error::UnknownType { code: 9 })
        );
        assert_eq!(
            Request::decode(br#"{"Type":2,"Content":{"Username":"u"}}"#),
            Err(Error::MissingField {
                field: "Group".into()
            })
        );
        assert_eq!(
            Request::decode(br#"{"Content":{}}"#),
            Err(Error::MissingField {
                field: "Type".into()
            })
        );
        assert!(matches!(
            Request::decode(br#"{"Type":"2","Content":{}}"#),
            Err(Error::WrongType { .. })
        ));
        assert!(matches!(
            Request::decode(br#"{"Type":7,"Content":{"Username":7}}"#),
            Err(Error::WrongType { .. })
        ));
        assert!(matches!(
            Request::decode(br#"[1,2]"#),
            Err(Error::WrongType { .. })
        ));
        assert!(matches!(
            Request::decode(b"{\"Type\":7"),
            Err(Error::Syntax { .. })
        ));
        let huge = vec![b' '; MAX_REQUEST_LEN + 1];
        assert!(matches!(
            Request::decode(&huge),
            Err(Error::Oversized { .. })
        ));
    }

    #[test]
    fn replies_round_trip_and_expose_typed_content() {
        let member = Member {
            ip: "127.0.0.1".into(),
            port: 5000,
            username: "ford".into(),
            uid: "1".into(),
        };
        let reply = Reply::ok(serde_json::to_value(vec![member.clone()]).expect("value"));
        let back = Reply::decode(&reply.encode()).expect("decodes");
        assert_eq!(back.members(), Ok(vec![member]));

        let failure = Reply::failure("no such group: chess");
        let text = String::from_utf8(failure.encode()).expect("utf8");
        assert_eq!(
            text,
            r#"{"Success":false,"Content":"no such group: chess"}"#
        );
        assert_eq!(
            Reply::decode(text.as_bytes()).and_then(|r| r.text()),
            Ok("no such group: chess".into())
        );
    }
}
