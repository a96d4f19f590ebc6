//! Subscribing with deltas (`?delta=json-patch`): what a client that already holds a state
//! is sent first, and the patch between any state in history and the latest.

use std::sync::Arc;

use bytes::Bytes;

use super::{Resume, Subscribe, Topic};
use crate::hub::cursor::Cursor;
use crate::hub::delta::{diff, DeltaCursor};
use crate::hub::message::Message;

impl Topic {
    /// Like [`Topic::subscribe`], for a client that takes patches: the backlog is at most
    /// the latest state, and the returned [`DeltaCursor`] says how to send each message. A
    /// client resuming from a state still in history gets one patch from it to the latest
    /// (computed here, for this client); any other resume gets the full latest state (after
    /// a `reset` when its cursor was unknown, as without deltas).
    pub fn subscribe_deltas(self: &Arc<Self>, resume: Resume) -> (Subscribe, DeltaCursor) {
        let mut subscribed = self.subscribe(resume);
        let latest = subscribed.backlog.pop();
        subscribed.backlog.clear();
        let known_base = match (resume, subscribed.reset) {
            (Resume::After(base), None) => Some(base),
            _ => None,
        };
        let cursor = DeltaCursor::new(self.key.name.clone(), known_base);
        if let (Some(base), Some(latest)) = (known_base, &latest) {
            // The message's own patch is used as it is when the client holds its base.
            if latest.delta.as_ref().map(|delta| delta.base) != Some(base) {
                if let Some(patch) = self.patch_from(base, latest) {
                    cursor.resume_with(latest.cursor, patch);
                }
            }
        }
        subscribed.backlog.extend(latest);
        (subscribed, cursor)
    }

    /// The patch from the state at `base` to `latest`, when `base` is still in history, both
    /// are JSON and the patch is smaller than `latest`'s state (otherwise the full state is
    /// what to send). The message's own patch when `base` is the state just before it.
    pub fn patch_from(&self, base: Cursor, latest: &Message) -> Option<Bytes> {
        if let Some(delta) = latest.delta.as_ref().filter(|delta| delta.base == base) {
            return Some(delta.patch.clone());
        }
        let (base_message, parsed_latest) = {
            let state = self.lock();
            let base_message = state.history.at(base)?.clone();
            (base_message, state.history.latest_document(latest.cursor))
        };
        // Parsed and diffed outside the lock: publishing does not wait for a resume.
        let before: serde_json::Value = serde_json::from_slice(&base_message.data).ok()?;
        let after = match parsed_latest {
            Some(document) => document,
            None => Arc::new(serde_json::from_slice(&latest.data).ok()?),
        };
        diff(&self.key.name, "resume", &before, &after, latest.data.len())
    }
}

#[cfg(test)]
mod tests {
    //! A property test of the hub's half: random documents and edit sequences, published in
    //! bursts to subscribers whose queue conflates (so some skip messages), which resume from
    //! states in history, out of it and from another epoch. Applying what each
    //! [`DeltaCursor`] says, from the first full state on, always gives the latest state.
    use super::*;
    use crate::hub::delta::DeltaStep;
    use crate::hub::topic::tests::settings;
    use crate::hub::{Delivery, Epoch, Mode, OverflowPolicy, Payload, QueueLimits, Subscription, TopicKey};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{json, Value};

    fn random_value(rng: &mut StdRng, depth: u32) -> Value {
        match rng.random_range(0..if depth == 0 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => json!(rng.random_range(-50i64..50)),
            2 => json!("s".repeat(rng.random_range(0..20))),
            3 => Value::Bool(rng.random_bool(0.5)),
            4 => Value::Object(
                (0..rng.random_range(0..5))
                    .map(|_| {
                        (
                            format!("k{}", rng.random_range(0..8)),
                            random_value(rng, depth - 1),
                        )
                    })
                    .collect(),
            ),
            _ => Value::Array(
                (0..rng.random_range(0..5))
                    .map(|_| random_value(rng, depth - 1))
                    .collect(),
            ),
        }
    }

    fn edit(rng: &mut StdRng, document: &mut Value) {
        let Value::Object(map) = document else {
            *document = json!({});
            return;
        };
        let key = format!("k{}", rng.random_range(0..12));
        match rng.random_range(0..10) {
            0 => {
                map.remove(&key);
            }
            1 => {
                // Everything at once: the patch is not smaller, the full state goes.
                *map = (0..3)
                    .map(|n| (format!("new{n}"), random_value(rng, 1)))
                    .collect();
            }
            _ => {
                map.insert(key, random_value(rng, 3));
            }
        }
    }

    struct Client {
        document: Option<Value>,
        subscription: Subscription,
        deltas: DeltaCursor,
    }

    fn apply(document: &mut Option<Value>, patch: &[u8]) {
        let patch: json_patch::Patch = serde_json::from_slice(patch).expect("a JSON Patch");
        let document = document.as_mut().expect("a patch comes after a full state");
        json_patch::patch(document, &patch).expect("the patch applies");
    }

    impl Client {
        fn connect(topic: &Arc<Topic>, resume: Resume, document: Option<Value>) -> (Self, usize) {
            let (subscribed, deltas) = topic.subscribe_deltas(resume);
            let mut client = Client {
                document,
                subscription: subscribed.subscription,
                deltas,
            };
            let patches = subscribed.backlog.iter().map(|m| client.receive(m)).sum();
            (client, patches)
        }

        /// Returns 1 for a patch, 0 for a full state.
        fn receive(&mut self, message: &Message) -> usize {
            match self.deltas.step(message) {
                DeltaStep::Patch(delta) => apply(&mut self.document, &delta.patch),
                DeltaStep::ResumePatch(patch) => apply(&mut self.document, &patch),
                DeltaStep::Full => {
                    self.document = Some(serde_json::from_slice(&message.data).expect("JSON"));
                    return 0;
                }
            }
            1
        }

        fn drain(&mut self) -> usize {
            let mut patches = 0;
            while let Some(Delivery::Message { message, .. }) = self.subscription.try_recv() {
                patches += self.receive(&message);
            }
            patches
        }
    }

    fn publish(topic: &Topic, document: &Value) {
        topic.publish(Payload {
            data: Bytes::from(serde_json::to_vec(document).expect("serializable")),
            ..Payload::default()
        });
    }

    #[test]
    fn applying_every_patch_from_the_first_full_state_gives_the_latest_state() {
        let mut patches = 0;
        let mut resume_patches = 0;
        for seed in 0..30 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut topic_settings = settings(Mode::State);
            topic_settings.deltas = true;
            topic_settings.on_full = OverflowPolicy::Conflate;
            topic_settings.queue = QueueLimits {
                max_messages: 2,
                max_bytes: 1 << 20,
            };
            let topic = Topic::new(TopicKey::new("t", vec![]), topic_settings);
            let mut latest = json!({"k0": random_value(&mut rng, 3), "pad": "p".repeat(200)});
            publish(&topic, &latest);
            let (mut client, _) = Client::connect(&topic, Resume::Latest, None);
            for round in 0..100 {
                for _ in 0..rng.random_range(1..=3) {
                    edit(&mut rng, &mut latest);
                    publish(&topic, &latest);
                }
                let held = client.deltas.holds();
                let resume = match rng.random_range(0..10) {
                    0 => held.map(Resume::After),
                    1 => {
                        // Past history (4 messages): the cursor is unknown now.
                        for _ in 0..5 {
                            edit(&mut rng, &mut latest);
                            publish(&topic, &latest);
                        }
                        held.map(Resume::After)
                    }
                    2 => Some(Resume::After(Cursor {
                        epoch: Epoch::from_raw(1),
                        seq: 1,
                    })),
                    _ => None,
                };
                match resume {
                    Some(resume) => {
                        let document = client.document.take();
                        drop(client);
                        let (resumed, first) = Client::connect(&topic, resume, document);
                        client = resumed;
                        resume_patches += first;
                        patches += first;
                    }
                    None => patches += client.drain(),
                }
                let expected =
                    serde_json::from_slice::<Value>(&topic.latest().expect("a state").data).expect("JSON");
                assert_eq!(expected, latest);
                assert_eq!(
                    client.document.as_ref(),
                    Some(&latest),
                    "seed {seed}, round {round}"
                );
            }
        }
        assert!(patches > 500, "{patches}");
        assert!(resume_patches > 20, "{resume_patches}");
    }

    #[test]
    fn a_resume_from_history_is_one_patch_computed_for_that_client() {
        let mut topic_settings = settings(Mode::State);
        topic_settings.deltas = true;
        let topic = Topic::new(TopicKey::new("t", vec![]), topic_settings);
        let document = |n: u64| json!({"n": n, "rows": (0..40).collect::<Vec<_>>()});
        publish(&topic, &document(1));
        let base = topic.cursor();
        publish(&topic, &document(2));
        publish(&topic, &document(3));
        let (subscribed, deltas) = topic.subscribe_deltas(Resume::After(base));
        assert_eq!(subscribed.backlog.len(), 1, "the latest only");
        match deltas.step(&subscribed.backlog[0]) {
            DeltaStep::ResumePatch(patch) => {
                let patch: Value = serde_json::from_slice(&patch).expect("JSON");
                assert_eq!(patch, json!([{"op": "replace", "path": "/n", "value": 3}]));
            }
            other => panic!("one patch from seq 1 to 3: {other:?}"),
        }
        // Up to date: nothing to send; the next message goes as its own patch.
        let (subscribed, deltas) = topic.subscribe_deltas(Resume::After(topic.cursor()));
        assert!(subscribed.backlog.is_empty());
        publish(&topic, &document(4));
        let Some(Delivery::Message { message, .. }) = subscribed.subscription.try_recv() else {
            panic!("a delivery");
        };
        assert!(matches!(deltas.step(&message), DeltaStep::Patch(_)));
    }
}
