//! Acknowledgements: in receive order, only on the connection that delivered the message.
//!
//! MQTT 3.1.1 and 5 (section 4.6) ask a client to send PUBACKs in the order the PUBLISH packets
//! arrived. Mosquitto would accept any order, but batches commit out of order when several are
//! in flight, so a message's ack waits here until every earlier message of its connection is done.
//! Batches commit roughly in order, so that wait is short.
//!
//! A packet id only names a message on the connection that delivered it: after a reconnect the
//! broker redelivers unacknowledged messages and may reuse an acknowledged id for a new message.
//! An ack left over from the old connection could then acknowledge a message nobody has stored.
//! Each connection is a *generation*; acks of an older generation are dropped (the broker
//! redelivers those messages, storage deduplicates them).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Mutex, MutexGuard},
};

use rumqttc::v5::{AsyncClient, mqttbytes::v5::Publish};

use crate::metrics::Metrics;

pub struct Acker {
    client: AsyncClient,
    metrics: Metrics,
    state: Mutex<AckState>,
}

#[derive(Default)]
struct AckState {
    generation: u64,
    next_seq: u64,
    done: BTreeMap<u64, Publish>,
    /// Acks due but not yet accepted by rumqttc's request channel (full), oldest first.
    unsent: VecDeque<Publish>,
    /// Messages of every generation received and not yet done (drain waits for 0).
    held: u64,
    /// Messages ever received through this acker.
    received_total: u64,
}

impl Acker {
    pub fn new(client: AsyncClient, metrics: Metrics) -> Self {
        Self { client, metrics, state: Mutex::new(AckState::default()) }
    }

    fn lock(&self) -> MutexGuard<'_, AckState> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters more than stopping ingest would, so keep going with the inner value.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called by the event loop for each PUBLISH, in arrival order.
    pub fn received(&self) {
        let mut state = self.lock();
        state.held += 1;
        state.received_total += 1;
        // A gauge shared by every connection's acker (and the restart guard's): inc/dec.
        self.metrics.inflight_messages.inc();
    }

    /// The connection ended: forget the pending acks and start a new generation. Must be
    /// called by the event-loop task before `EventLoop::clean` so that no ack of the old
    /// generation can be queued after the clean drained the request channel.
    pub fn new_generation(&self) -> u64 {
        let mut state = self.lock();
        state.generation += 1;
        state.next_seq = 0;
        state.done.clear();
        state.unsent.clear();
        state.generation
    }

    /// A message is committed or rejected: acknowledge it and every consecutive one after it.
    pub fn done(&self, generation: u64, seq: u64, publish: Publish) {
        let mut state = self.lock();
        if state.held > 0 {
            state.held -= 1;
            self.metrics.inflight_messages.dec();
        }
        if generation != state.generation {
            return;
        }
        state.done.insert(seq, publish);
        loop {
            let next = state.next_seq;
            let Some(publish) = state.done.remove(&next) else { break };
            state.next_seq += 1;
            state.unsent.push_back(publish);
        }
        self.send(&mut state);
    }

    /// Retries acks that found the request channel full. The channel is sized above the
    /// receive maximum, but Mosquitto 2.0 can overshoot that window during bursts, and a
    /// dropped ack would pin its message (and a window slot) until the next reconnect.
    pub fn flush(&self) {
        let mut state = self.lock();
        if !state.unsent.is_empty() {
            self.send(&mut state);
        }
    }

    fn send(&self, state: &mut AckState) {
        while let Some(publish) = state.unsent.pop_front() {
            match self.client.try_ack(&publish) {
                Ok(()) => self.metrics.messages_acked.inc(),
                Err(e) => {
                    // Full (or the event loop is gone, and then the broker redelivers).
                    tracing::debug!(error = %e, pkid = publish.pkid, "PUBACK deferred");
                    state.unsent.push_front(publish);
                    break;
                }
            }
        }
    }

    pub fn received_total(&self) -> u64 {
        self.lock().received_total
    }

    pub fn held(&self) -> u64 {
        self.lock().held
    }

    /// Nothing held and every ack handed to rumqttc (drain is complete).
    pub fn idle(&self) -> bool {
        let state = self.lock();
        state.held == 0 && state.unsent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rumqttc::v5::{
        Request,
        mqttbytes::{QoS, v5::Publish},
    };

    use super::*;

    fn publish(pkid: u16) -> Publish {
        let mut p = Publish::new("devices/d/telemetry", QoS::AtLeastOnce, "{}", None);
        p.pkid = pkid;
        p
    }

    fn acker(capacity: usize) -> (Acker, flume::Receiver<Request>) {
        let (tx, rx) = flume::bounded(capacity);
        let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
        (Acker::new(rumqttc::v5::AsyncClient::from_senders(tx), metrics), rx)
    }

    fn acked(rx: &flume::Receiver<Request>) -> Vec<u16> {
        rx.drain()
            .map(|r| match r {
                Request::PubAck(ack) => ack.pkid,
                other => panic!("unexpected request {other:?}"),
            })
            .collect()
    }

    #[test]
    fn acks_go_out_in_receive_order() {
        let (acker, rx) = acker(100);
        for _ in 0..4 {
            acker.received();
        }
        // Batches commit out of order: 2 and 3 first, then 0, then 1.
        acker.done(0, 2, publish(12));
        acker.done(0, 3, publish(13));
        assert!(acked(&rx).is_empty(), "acked before earlier messages were done");
        acker.done(0, 0, publish(10));
        assert_eq!(acked(&rx), [10]);
        acker.done(0, 1, publish(11));
        assert_eq!(acked(&rx), [11, 12, 13]);
        assert!(acker.idle());
    }

    #[test]
    fn acks_of_an_old_connection_are_dropped() {
        let (acker, rx) = acker(100);
        acker.received();
        acker.received();
        assert_eq!(acker.new_generation(), 1);
        // Done after the reconnect: the broker redelivers it, so it must not be acked now
        // (packet id 5 may already name a different message on the new connection).
        acker.done(0, 0, publish(5));
        acker.done(0, 1, publish(6));
        assert!(acked(&rx).is_empty());
        assert_eq!(acker.held(), 0);
        acker.received();
        acker.done(1, 0, publish(5));
        assert_eq!(acked(&rx), [5]);
    }

    #[test]
    fn a_full_request_channel_defers_acks_without_losing_or_reordering_them() {
        let (acker, rx) = acker(2);
        for _ in 0..5 {
            acker.received();
        }
        for seq in 0..5 {
            acker.done(0, seq, publish(100 + seq as u16));
        }
        assert_eq!(acker.held(), 0);
        assert!(!acker.idle(), "acks still waiting for the channel");
        assert_eq!(acked(&rx), [100, 101]);
        acker.flush();
        assert_eq!(acked(&rx), [102, 103]);
        acker.flush();
        assert_eq!(acked(&rx), [104]);
        assert!(acker.idle());
    }
}
