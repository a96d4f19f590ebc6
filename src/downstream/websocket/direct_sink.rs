//! Hands the shared frame of a message straight to the socket of a parked WebSocket client
//! (see [`crate::downstream::direct`]).

use std::sync::Arc;

use crate::config::Envelope;
use crate::downstream::direct::DirectWriter;
use crate::downstream::wire::websocket::{message_frame_now, WindowBits};
use crate::hub::{DirectSink, Message};

pub struct WebSocketSink {
    pub writer: DirectWriter,
    pub envelope: Envelope,
    pub deflate: Option<WindowBits>,
    pub deflate_min_bytes: usize,
}

impl DirectSink for WebSocketSink {
    fn offer(&self, message: &Arc<Message>) -> bool {
        // A large deflate nobody made yet is made off the runtime by the connection's task.
        message_frame_now(message, self.envelope, self.deflate, self.deflate_min_bytes)
            .is_some_and(|frame| self.writer.write(message, &frame))
    }

    fn prefetch(&self) {
        self.writer.prefetch();
    }
}
