//! Hands the shared frame of a message straight to the socket of a parked WebSocket client
//! (see [`crate::downstream::direct`]).

use std::sync::Arc;

use prometheus::IntCounter;

use crate::config::Envelope;
use crate::downstream::direct::{Socket, TryWrite};
use crate::downstream::wire::websocket::{message_frame_now, WindowBits};
use crate::hub::{DirectSink, Message, Topic};

pub struct WebSocketSink {
    pub socket: Arc<Socket>,
    pub topic: Arc<Topic>,
    pub envelope: Envelope,
    pub deflate: Option<WindowBits>,
    pub deflate_min_bytes: usize,
    pub deliveries: IntCounter,
    pub bytes_written: IntCounter,
}

impl DirectSink for WebSocketSink {
    fn offer(&self, message: &Arc<Message>) -> bool {
        // A large deflate nobody made yet is made off the runtime by the connection's task.
        let Some(frame) = message_frame_now(message, self.envelope, self.deflate, self.deflate_min_bytes)
        else {
            return false;
        };
        if self.socket.try_write_now(&frame) == TryWrite::Refused {
            return false;
        }
        self.deliveries.inc();
        crate::metrics::delivered(&self.topic, message, 1);
        self.bytes_written.inc_by(frame.len() as u64);
        self.topic.stats().wrote(frame.len());
        true
    }
}
