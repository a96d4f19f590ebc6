//! WebSocket data frames (RFC 6455) of hub messages, plain or deflated (RFC 7692) per window
//! size, encoded once per message and shared by every subscriber: the same bytes are
//! written to every socket.

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, CompressError, Compression, FlushCompress};

use super::message_slot;
use crate::config::Envelope;
use crate::hub::encodings::{AwaitedSlot, InlineSlot};
use crate::hub::Message;
use crate::metrics::METRICS;

/// Payloads at least this large are deflated on tokio's blocking pool rather than on the
/// runtime thread that first needs the frame. At `Compression::fast()` zlib-ng deflates
/// in the order of 100-300 MB/s per core, so 64 KiB is a few hundred µs: about where one
/// deflate starts to hold up every other connection on that worker, and well above what
/// the hand-off itself costs (a thread switch and a wake-up, tens of µs), which would
/// dominate for the usual messages of a few hundred bytes.
pub const DEFLATE_OFF_RUNTIME_BYTES: usize = 64 * 1024;

/// The LZ77 window the server deflates a client's messages with (RFC 7692 §7.1.2.1
/// `server_max_window_bits`), in bits. The RFC allows 8 to 15; zlib cannot deflate raw
/// data with a 256-byte window, so 9 is the smallest one offered here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowBits(u8);

impl WindowBits {
    pub const SMALLEST: u8 = 9;
    /// The default window: 32 KiB.
    pub const FULL: WindowBits = WindowBits(15);
    /// How many window sizes there are (9 to 15).
    pub const COUNT: usize = 7;

    /// `None` outside 9..=15.
    pub fn new(bits: u8) -> Option<Self> {
        (Self::SMALLEST..=Self::FULL.0)
            .contains(&bits)
            .then_some(WindowBits(bits))
    }

    pub fn get(self) -> u8 {
        self.0
    }

    /// 0 for 9 bits, …, 6 for 15: a slot in a per-window cache.
    pub fn index(self) -> usize {
        usize::from(self.0 - Self::SMALLEST)
    }
}

const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

/// The WebSocket frame of `message` for `envelope`, deflated with the `deflate` window when
/// there is one (and the payload is at least `deflate_min_bytes`). Encoded once per message
/// and window size, whatever the number of clients.
pub async fn message_frame(
    message: &Message,
    envelope: Envelope,
    deflate: Option<WindowBits>,
    deflate_min_bytes: usize,
) -> Bytes {
    match plan(message, envelope, deflate, deflate_min_bytes) {
        Plan::Plain { slot, payload } => message.encodings.inline(slot, || {
            encode_frame(&payload, is_text(envelope, &payload), false)
        }),
        Plan::Deflated {
            slot,
            payload,
            window,
        } => {
            message
                .encodings
                .awaited(slot, || {
                    let text = is_text(envelope, &payload);
                    deflated_frame(payload, text, window)
                })
                .await
        }
    }
}

/// [`message_frame`] without waiting: `None` only when the frame is a large deflate
/// (see [`DEFLATE_OFF_RUNTIME_BYTES`]) nobody has made yet, which must not run here.
pub fn message_frame_now(
    message: &Message,
    envelope: Envelope,
    deflate: Option<WindowBits>,
    deflate_min_bytes: usize,
) -> Option<Bytes> {
    match plan(message, envelope, deflate, deflate_min_bytes) {
        Plan::Plain { slot, payload } => Some(message.encodings.inline(slot, || {
            encode_frame(&payload, is_text(envelope, &payload), false)
        })),
        Plan::Deflated { slot, payload, .. } if payload.len() >= DEFLATE_OFF_RUNTIME_BYTES => {
            message.encodings.made(slot)
        }
        Plan::Deflated {
            slot,
            payload,
            window,
        } => Some(message.encodings.awaited_now(slot, || {
            deflate_frame(&payload, is_text(envelope, &payload), window)
        })),
    }
}

/// Which frame a message gets, and the cache slot it is kept in.
enum Plan {
    Plain {
        slot: InlineSlot,
        payload: Bytes,
    },
    Deflated {
        slot: AwaitedSlot,
        payload: Bytes,
        window: WindowBits,
    },
}

/// A text frame for the JSON envelope and for UTF-8 payloads. Only looked at when a frame
/// is made, not on every delivery.
fn is_text(envelope: Envelope, payload: &[u8]) -> bool {
    envelope == Envelope::Json || std::str::from_utf8(payload).is_ok()
}

fn plan(
    message: &Message,
    envelope: Envelope,
    deflate: Option<WindowBits>,
    deflate_min_bytes: usize,
) -> Plan {
    let (payload, plain_slot, deflated_slot) = match envelope {
        Envelope::Raw => (
            message.data.clone(),
            message_slot::WEBSOCKET_RAW,
            message_slot::DEFLATED_RAW,
        ),
        Envelope::Json => (
            super::json::entry(message),
            message_slot::WEBSOCKET_JSON,
            message_slot::DEFLATED_JSON,
        ),
    };
    let window = deflate.filter(|_| payload.len() >= deflate_min_bytes);
    match window.and_then(|window| Some((window, deflated_slot.offset(window.index())?))) {
        None => Plan::Plain {
            slot: plain_slot,
            payload,
        },
        Some((window, slot)) => Plan::Deflated {
            slot,
            payload,
            window,
        },
    }
}

/// A complete unmasked server frame: FIN, RSV1 when `compressed`, opcode, length, payload.
pub fn encode_frame(payload: &[u8], text: bool, compressed: bool) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 10);
    let opcode = if text { OPCODE_TEXT } else { OPCODE_BINARY };
    frame.put_u8(0x80 | if compressed { 0x40 } else { 0 } | opcode);
    match payload.len() {
        len @ 0..=125 => frame.put_u8(len as u8),
        len @ 126..=0xFFFF => {
            frame.put_u8(126);
            frame.put_u16(len as u16);
        }
        len => {
            frame.put_u8(127);
            frame.put_u64(len as u64);
        }
    }
    frame.put_slice(payload);
    frame.freeze()
}

/// Deflates one whole message per RFC 7692 with no context carried over (the server always
/// negotiates `server_no_context_takeover`) and with `window`, so the result is valid for
/// every client that negotiated that window (or a larger one).
pub fn deflate_message(payload: &[u8], window: WindowBits) -> Result<Bytes, CompressError> {
    let mut compress = Compress::new_with_window_bits(Compression::fast(), false, window.get());
    let mut output = Vec::with_capacity(payload.len() / 2 + 64);
    // A sync flush ends the data with an empty stored block, 00 00 FF FF, which the
    // receiver adds back. It is done once the input is used up and the output did not fill.
    loop {
        let consumed = usize::try_from(compress.total_in()).unwrap_or(payload.len());
        compress.compress_vec(&payload[consumed..], &mut output, FlushCompress::Sync)?;
        let done = usize::try_from(compress.total_in()).is_ok_and(|n| n == payload.len());
        if done && output.len() < output.capacity() {
            break;
        }
        output.reserve(output.capacity().max(64));
    }
    if output.ends_with(&[0x00, 0x00, 0xFF, 0xFF]) {
        output.truncate(output.len() - 4);
    }
    METRICS.websocket_deflate_compressions.inc();
    // Once per message and window size, not per delivery: the label lookup is affordable.
    METRICS
        .websocket_deflate_bytes
        .with_label_values(&["in"])
        .inc_by(payload.len() as u64);
    METRICS
        .websocket_deflate_bytes
        .with_label_values(&["out"])
        .inc_by(output.len() as u64);
    Ok(Bytes::from(output))
}

/// The deflated frame of `payload`; plain if deflating failed (it does not, into memory;
/// if it ever did, a plain frame is still valid). A payload of
/// [`DEFLATE_OFF_RUNTIME_BYTES`] or more is deflated on the blocking pool, so the runtime
/// thread goes on serving other connections meanwhile.
pub async fn deflated_frame(payload: Bytes, text: bool, window: WindowBits) -> Bytes {
    if payload.len() < DEFLATE_OFF_RUNTIME_BYTES {
        return deflate_frame(&payload, text, window);
    }
    let kept = payload.clone();
    match tokio::task::spawn_blocking(move || deflate_frame(&payload, text, window)).await {
        Ok(frame) => frame,
        // The blocking pool is gone (the runtime is shutting down).
        Err(_) => encode_frame(&kept, text, false),
    }
}

fn deflate_frame(payload: &[u8], text: bool, window: WindowBits) -> Bytes {
    match deflate_message(payload, window) {
        Ok(compressed) => encode_frame(&compressed, text, true),
        Err(_) => encode_frame(payload, text, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress, Status};

    /// Inflates with a `bits` window, a few bytes of output at a time: a reference further
    /// back than the window then fails, as it does for a client that keeps only that window
    /// (one large output buffer would let zlib reach back into it and hide the error).
    fn inflate_strictly(data: &[u8], bits: u8) -> Result<Vec<u8>, String> {
        let mut input = data.to_vec();
        input.extend_from_slice(&[0x00, 0x00, 0xFF, 0xFF]);
        let mut decompressor = Decompress::new_with_window_bits(false, bits);
        let mut output = Vec::new();
        loop {
            let consumed = decompressor.total_in() as usize;
            let mut chunk = [0u8; 16];
            let before = decompressor.total_out();
            let status = decompressor
                .decompress(&input[consumed..], &mut chunk, FlushDecompress::Sync)
                .map_err(|error| error.to_string())?;
            let produced = (decompressor.total_out() - before) as usize;
            output.extend_from_slice(&chunk[..produced]);
            let all_in = decompressor.total_in() as usize == input.len();
            if (all_in && produced < chunk.len()) || status == Status::StreamEnd {
                return Ok(output);
            }
            if produced == 0 && decompressor.total_in() as usize == consumed {
                return Err("no progress".into());
            }
        }
    }

    fn inflate(data: &[u8]) -> Vec<u8> {
        inflate_strictly(data, 15).expect("valid deflate")
    }

    /// Text whose repeats are ~1 KiB apart: a 15-bit window finds them, a 9-bit one must not.
    fn far_repeats() -> Vec<u8> {
        let block: Vec<u8> = (0..1000u32)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz"[(i * i % 26) as usize])
            .collect();
        block.repeat(20)
    }

    #[test]
    fn frame_headers_follow_rfc_6455_lengths() {
        assert_eq!(&encode_frame(b"hi", true, false)[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(&encode_frame(b"", false, true)[..2], &[0xC2, 0]);
        let medium = encode_frame(&[0u8; 300], true, false);
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x2C]);
        let large = encode_frame(&vec![0u8; 70_000], true, false);
        assert_eq!(&large[..10], &[0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]);
    }

    #[test]
    fn deflated_messages_inflate_back_without_shared_context() {
        let text = "the same message, ".repeat(200);
        let first = deflate_message(text.as_bytes(), WindowBits::FULL).expect("deflates");
        let second = deflate_message(text.as_bytes(), WindowBits::FULL).expect("deflates");
        assert_eq!(first, second, "no context: identical input, identical output");
        assert!(first.len() < text.len() / 5);
        assert_eq!(inflate(&first), text.as_bytes());
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(
            inflate(&deflate_message(&big, WindowBits::FULL).expect("deflates")),
            big
        );
        assert_eq!(
            inflate(&deflate_message(b"", WindowBits::FULL).expect("deflates")),
            b""
        );
    }

    #[test]
    fn each_window_size_stays_within_its_window() {
        let payload = far_repeats();
        let full = deflate_message(&payload, WindowBits::FULL).expect("deflates");
        // The check is sharp: the 15-bit stream reaches further back than 9 bits allow.
        assert!(inflate_strictly(&full, 9).is_err());
        for bits in WindowBits::SMALLEST..=15 {
            let window = WindowBits::new(bits).expect("in range");
            let compressed = deflate_message(&payload, window).expect("deflates");
            assert_eq!(
                inflate_strictly(&compressed, bits).as_deref(),
                Ok(&payload[..]),
                "{bits} bits"
            );
        }
        assert_eq!(WindowBits::new(8), None);
        assert_eq!(WindowBits::new(16), None);
        assert_eq!(WindowBits::new(9).map(WindowBits::index), Some(0));
        assert_eq!(WindowBits::FULL.index(), WindowBits::COUNT - 1);
    }

    #[tokio::test]
    async fn websocket_frames_are_shared_per_window_and_large_deflates_leave_the_runtime() {
        use crate::hub::{Cursor, Payload};
        use futures_util::FutureExt;
        let message = |seq: u64, data: String| {
            let cursor = Cursor::test(seq);
            Message::new(
                cursor,
                Payload {
                    data: Bytes::from(data),
                    ..Payload::default()
                },
            )
        };
        let small = message(1, "small ".repeat(100));
        let nine = WindowBits::new(9);
        let first = message_frame(&small, Envelope::Raw, nine, 0)
            .now_or_never()
            .expect("a small payload is deflated inline");
        let again = message_frame(&small, Envelope::Raw, nine, 0).await;
        assert_eq!(first.as_ptr(), again.as_ptr(), "one shared frame per window size");
        assert_eq!(first[0], 0xC1, "FIN, RSV1, text");
        let full = message_frame(&small, Envelope::Raw, Some(WindowBits::FULL), 0).await;
        assert_ne!(first.as_ptr(), full.as_ptr(), "another window, another frame");
        let plain = message_frame(&small, Envelope::Raw, None, 0).await;
        assert_eq!(plain[0], 0x81);
        let below_minimum = message_frame(&small, Envelope::Raw, nine, 10_000).await;
        assert_eq!(below_minimum.as_ptr(), plain.as_ptr());
        let json = message_frame(&small, Envelope::Json, nine, 0).await;
        assert_ne!(json.as_ptr(), first.as_ptr(), "each envelope has its own frames");
        assert_eq!(
            small.weight(),
            small.data.len()
                + first.len()
                + full.len()
                + plain.len()
                + json.len()
                + super::super::json::entry(&small).len(),
            "every frame made is counted in the weight"
        );

        let big = message(2, "big ".repeat(DEFLATE_OFF_RUNTIME_BYTES / 4));
        let mut first = Box::pin(message_frame(&big, Envelope::Raw, nine, 0));
        assert!(
            (&mut first).now_or_never().is_none(),
            "a large deflate is handed to the blocking pool, not done in this poll"
        );
        // A second client meanwhile awaits the same deflate instead of blocking or redoing it.
        let (first, second) = tokio::join!(first, message_frame(&big, Envelope::Raw, nine, 0));
        assert_eq!(first.as_ptr(), second.as_ptr());
        assert_eq!(first[0], 0xC1);
        assert!(first.len() < big.data.len() / 10);
    }
}
