//! The `accept` call (Workers RPC) between a Worker and its batcher. The body is a sequence of
//! sections, one per request: a line `#device=count device=count ...` (what the request costs
//! each device's rate limit) and then its enriched readings, one JSON document per line. Device
//! ids never hold `=`, spaces or `#`, and a reading document always starts with `{`.

use serde::{Deserialize, Serialize};

use crate::application::admission::{Admitted, Refused};
use crate::application::delivery::outbox::BacklogFull;
use crate::ports::StoreError;

/// One request's section of an `accept` body: what it costs each device, then its readings.
pub fn encode_section<'a>(
    device_costs: &[(String, u32)],
    docs: impl Iterator<Item = &'a str> + Clone,
) -> String {
    let size: usize = docs.clone().map(|d| d.len() + 1).sum();
    let mut body = String::with_capacity(size + 16 * device_costs.len() + 2);
    body.push('#');
    for (i, (device, count)) in device_costs.iter().enumerate() {
        if i > 0 {
            body.push(' ');
        }
        body.push_str(device);
        body.push('=');
        body.push_str(&count.to_string());
    }
    body.push('\n');
    for doc in docs {
        body.push_str(doc);
        body.push('\n');
    }
    body
}

pub struct Section<'a> {
    pub costs: Vec<(&'a str, u32)>,
    pub docs: Vec<&'a str>,
}

pub fn decode_sections(body: &str) -> Vec<Section<'_>> {
    let mut sections: Vec<Section<'_>> = Vec::new();
    for line in body.split('\n').filter(|l| !l.is_empty()) {
        match line.strip_prefix('#') {
            Some(header) => sections.push(Section {
                costs: header
                    .split(' ')
                    .filter_map(|pair| {
                        let (device, count) = pair.split_once('=')?;
                        Some((device, count.parse().ok()?))
                    })
                    .collect(),
                docs: Vec::new(),
            }),
            None => match sections.last_mut() {
                Some(section) => section.docs.push(line),
                // Readings before any header: a section without rate-limit costs.
                None => sections.push(Section {
                    costs: Vec::new(),
                    docs: vec![line],
                }),
            },
        }
    }
    sections
}

/// The batcher's answer to `accept`, as JSON (the RPC passes one string each way): the accept
/// use case's verdicts (`application::admission`), carried as they are.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", from = "FlatReply")]
pub enum AcceptReply {
    Accepted(AcceptAnswer),
    /// Nothing was stored: the delivery backlog is full.
    BacklogFull {
        retry_after_s: u32,
        limit: usize,
    },
    /// Nothing was stored: the object's storage failed (worth a retry).
    Unavailable {
        detail: String,
    },
    /// Nothing was stored: the batcher cannot work (e.g. its configuration is invalid).
    Refused {
        detail: String,
    },
}

impl AcceptReply {
    /// The batcher's side: the use case's verdicts on a call's sections, with its backlog.
    pub fn of(
        verdicts: Result<Vec<Admitted>, Refused>,
        sections: &[usize],
        backlog: usize,
    ) -> Self {
        match verdicts {
            Ok(verdicts) => {
                let mut answer = AcceptAnswer {
                    backlog,
                    ..AcceptAnswer::default()
                };
                for (index, (verdict, readings)) in verdicts.iter().zip(sections).enumerate() {
                    match verdict {
                        Admitted::Accepted => answer.accepted += readings,
                        Admitted::RateLimited { retry_after_s } => {
                            answer.limited.push((index, *retry_after_s))
                        }
                    }
                }
                Self::Accepted(answer)
            }
            Err(Refused::BacklogFull(full)) => Self::BacklogFull {
                retry_after_s: full.retry_after_s,
                limit: full.limit,
            },
            Err(refused @ Refused::Unavailable(_)) => Self::Unavailable {
                detail: refused.cause().unwrap_or_default().to_owned(),
            },
            Err(Refused::Fault(detail)) => Self::Refused { detail },
        }
    }

    /// The Worker's side: the verdicts again, one per section sent.
    pub fn verdicts(self, sections: usize) -> Result<Vec<Admitted>, Refused> {
        match self {
            Self::Accepted(answer) => {
                let mut verdicts = vec![Admitted::Accepted; sections];
                for (index, retry_after_s) in answer.limited {
                    match verdicts.get_mut(index) {
                        Some(v) => *v = Admitted::RateLimited { retry_after_s },
                        None => {
                            return Err(Refused::Fault("a section the call did not send".into()))
                        }
                    }
                }
                Ok(verdicts)
            }
            Self::BacklogFull {
                retry_after_s,
                limit,
            } => Err(Refused::BacklogFull(BacklogFull {
                limit,
                retry_after_s,
            })),
            Self::Unavailable { detail } => Err(StoreError(detail).into()),
            Self::Refused { detail } => Err(Refused::Fault(detail)),
        }
    }
}

/// `AcceptReply` as it is read: one flat object in one pass. serde reads an internally tagged
/// enum through a buffer of its own (`Content`), some 2 KB gzip of the Worker's upload.
#[derive(Deserialize)]
struct FlatReply {
    outcome: Outcome,
    #[serde(default)]
    accepted: usize,
    #[serde(default)]
    backlog: usize,
    #[serde(default)]
    limited: Vec<(usize, u32)>,
    #[serde(default)]
    retry_after_s: u32,
    #[serde(default)]
    limit: usize,
    #[serde(default)]
    detail: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Accepted,
    BacklogFull,
    Unavailable,
    Refused,
}

impl From<FlatReply> for AcceptReply {
    fn from(r: FlatReply) -> Self {
        match r.outcome {
            Outcome::Accepted => Self::Accepted(AcceptAnswer {
                accepted: r.accepted,
                backlog: r.backlog,
                limited: r.limited,
            }),
            Outcome::BacklogFull => Self::BacklogFull {
                retry_after_s: r.retry_after_s,
                limit: r.limit,
            },
            Outcome::Unavailable => Self::Unavailable { detail: r.detail },
            Outcome::Refused => Self::Refused { detail: r.detail },
        }
    }
}

/// What the batcher stored, and which sections (by index) it refused because a device was over
/// its rate limit, with the seconds until they would fit.
#[derive(Debug, Default, Serialize)]
pub struct AcceptAnswer {
    pub accepted: usize,
    pub backlog: usize,
    pub limited: Vec<(usize, u32)>,
}

// Built natively too (`hosts/mod.rs`), so that the format is tested without a Workers runtime.
#[cfg(test)]
mod tests {
    use super::*;

    fn costs(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
        pairs.iter().map(|(d, n)| ((*d).to_owned(), *n)).collect()
    }

    #[test]
    fn sections_round_trip_in_one_body() {
        let a = encode_section(
            &costs(&[("dev-1", 2)]),
            [r#"{"id":"a"}"#, r#"{"id":"b"}"#].into_iter(),
        );
        let b = encode_section(
            &costs(&[("dev-2", 1), ("dev-3", 1)]),
            [r#"{"id":"c"}"#].into_iter(),
        );
        let body = format!("{a}{b}");
        let sections = decode_sections(&body);
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[0].costs, vec![("dev-1", 2)]);
        assert_eq!(sections[0].docs, vec![r#"{"id":"a"}"#, r#"{"id":"b"}"#]);
        assert_eq!(sections[1].costs, vec![("dev-2", 1), ("dev-3", 1)]);
        assert_eq!(sections[1].docs, vec![r#"{"id":"c"}"#]);
    }

    #[test]
    fn a_section_with_no_costs_or_no_readings_still_counts() {
        let body = format!(
            "{}{}",
            encode_section(&[], [r#"{"id":"a"}"#].into_iter()),
            encode_section(&costs(&[("dev-1", 0)]), std::iter::empty())
        );
        let sections = decode_sections(&body);
        assert_eq!(sections.len(), 2);
        assert!(sections[0].costs.is_empty());
        assert_eq!(sections[0].docs, vec![r#"{"id":"a"}"#]);
        assert_eq!(sections[1].costs, vec![("dev-1", 0)]);
        assert!(sections[1].docs.is_empty());
    }

    #[test]
    fn malformed_cost_pairs_are_dropped_and_stray_readings_get_a_section() {
        let sections =
            decode_sections("{\"id\":\"x\"}\n#dev-1=2 junk dev-2=x dev-3=1\n{\"id\":\"y\"}\n");
        assert_eq!(sections.len(), 2);
        assert!(sections[0].costs.is_empty());
        assert_eq!(sections[0].docs, vec![r#"{"id":"x"}"#]);
        assert_eq!(sections[1].costs, vec![("dev-1", 2), ("dev-3", 1)]);
        assert_eq!(sections[1].docs, vec![r#"{"id":"y"}"#]);
        assert!(decode_sections("").is_empty());
    }

    #[test]
    fn replies_keep_their_shape_on_the_wire() {
        let json = serde_json::to_string(&AcceptReply::BacklogFull {
            retry_after_s: 5,
            limit: 100,
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"outcome":"backlog_full","retry_after_s":5,"limit":100}"#
        );
        let back: AcceptReply = serde_json::from_str(
            r#"{"outcome":"accepted","accepted":3,"backlog":7,"limited":[[1,4]]}"#,
        )
        .unwrap();
        match back {
            AcceptReply::Accepted(a) => {
                assert_eq!((a.accepted, a.backlog, a.limited), (3, 7, vec![(1, 4)]))
            }
            other => panic!("{other:?}"),
        }
        // What the batcher writes, the Worker reads back as it was, for every outcome.
        let replies = [
            AcceptReply::Accepted(AcceptAnswer {
                accepted: 2,
                backlog: 9,
                limited: vec![(0, 3)],
            }),
            AcceptReply::BacklogFull {
                retry_after_s: 5,
                limit: 100,
            },
            AcceptReply::Unavailable {
                detail: "disk".into(),
            },
            AcceptReply::Refused {
                detail: "misconfigured".into(),
            },
        ];
        for reply in replies {
            let json = serde_json::to_string(&reply).unwrap();
            let back: AcceptReply = serde_json::from_str(&json).unwrap();
            assert_eq!(format!("{back:?}"), format!("{reply:?}"));
        }
        assert!(serde_json::from_str::<AcceptReply>(r#"{"outcome":"maybe"}"#).is_err());
    }

    /// A verdict survives the trip from the batcher's use case to the Worker unchanged.
    #[test]
    fn verdicts_cross_the_wire_as_they_are() {
        let full = BacklogFull {
            limit: 10,
            retry_after_s: 4,
        };
        let cases: Vec<Result<Vec<Admitted>, Refused>> = vec![
            Ok(vec![
                Admitted::Accepted,
                Admitted::RateLimited { retry_after_s: 2 },
                Admitted::Accepted,
            ]),
            Err(Refused::BacklogFull(full)),
            Err(StoreError("disk".into()).into()),
            Err(Refused::Fault("misconfigured".into())),
        ];
        for verdicts in cases {
            let json = serde_json::to_string(&AcceptReply::of(verdicts.clone(), &[1, 2, 3], 9));
            let back: AcceptReply = serde_json::from_str(&json.unwrap()).unwrap();
            assert_eq!(back.verdicts(3), verdicts);
        }
        let stray = AcceptReply::Accepted(AcceptAnswer {
            accepted: 0,
            backlog: 0,
            limited: vec![(5, 1)],
        });
        assert!(matches!(stray.verdicts(2), Err(Refused::Fault(_))));
    }
}
