//! Packages cut into data-channel messages and put back together.
//!
//! An SCTP message is bounded (64 KiB by default, the size every WebRTC stack accepts), and
//! packages can be MiBs, so one package frame travels as a run of messages: a *start*
//! message (tag, 4-byte big-endian frame length, first bytes) and as many *continuation*
//! messages (tag, next bytes) as needed. The channel is ordered and reliable, so a run is
//! never interleaved with another. The reassembler trusts nothing: a length above the limit
//! is refused before anything is buffered, and any message that does not fit the run is
//! [`ChannelError::Malformed`].

use bytes::BytesMut;
use storex_sync::fast_sync::ChannelError;

/// The largest message this crate sends: the SCTP default every peer accepts.
pub(crate) const MESSAGE_LIMIT: usize = 64 * 1024;
/// Tag of the first message of a frame.
const START: u8 = 0xF5;
/// Tag of every further message of a frame.
const CONTINUATION: u8 = 0xC0;
/// Start tag and length.
const START_HEADER: usize = 5;
/// How much is reserved up front for a frame, whatever length the peer announces.
const INITIAL_RESERVE: usize = 1024 * 1024;

/// Cuts one frame into messages of at most `limit` bytes (`limit` > [`START_HEADER`]).
pub(crate) fn split(frame: &[u8], limit: usize) -> Vec<BytesMut> {
    debug_assert!(limit > START_HEADER);
    let first = frame.len().min(limit - START_HEADER);
    let mut messages = Vec::with_capacity(1 + (frame.len() - first).div_ceil(limit - 1));
    let mut start = BytesMut::with_capacity(START_HEADER + first);
    start.extend_from_slice(&[START]);
    // The caller keeps frames below the configured limit, itself below 4 GiB.
    start.extend_from_slice(&u32::try_from(frame.len()).unwrap_or(u32::MAX).to_be_bytes());
    start.extend_from_slice(&frame[..first]);
    messages.push(start);
    for piece in frame[first..].chunks(limit - 1) {
        let mut message = BytesMut::with_capacity(1 + piece.len());
        message.extend_from_slice(&[CONTINUATION]);
        message.extend_from_slice(piece);
        messages.push(message);
    }
    messages
}

/// Puts frames back together from messages, refusing anything that does not fit.
#[derive(Debug)]
pub(crate) struct Reassembler {
    max_frame: usize,
    /// The frame being put together and its announced length.
    partial: Option<(Vec<u8>, usize)>,
}

fn malformed(problem: &str) -> ChannelError {
    ChannelError::Malformed {
        problem: problem.to_owned(),
    }
}

impl Reassembler {
    /// A reassembler for frames of at most `max_frame` bytes.
    pub(crate) fn new(max_frame: usize) -> Self {
        Reassembler {
            max_frame,
            partial: None,
        }
    }

    /// True while a frame is half received.
    pub(crate) fn in_frame(&self) -> bool {
        self.partial.is_some()
    }

    /// Takes one message; returns the frame it completes, if it completes one.
    pub(crate) fn push(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        let Some((&tag, body)) = message.split_first() else {
            return Err(malformed("an empty data-channel message"));
        };
        match tag {
            START => {
                if self.partial.is_some() {
                    return Err(malformed("a new frame began before the last one ended"));
                }
                let Some((length, data)) = body.split_first_chunk::<4>() else {
                    return Err(malformed("a frame header cut short"));
                };
                let length = u32::from_be_bytes(*length) as usize;
                if length > self.max_frame {
                    return Err(ChannelError::TooLarge {
                        limit: self.max_frame,
                    });
                }
                if length == 0 {
                    return Err(malformed("an empty frame"));
                }
                if data.len() > length {
                    return Err(malformed("a frame longer than its header says"));
                }
                if data.len() == length {
                    return Ok(Some(data.to_vec()));
                }
                let mut frame = Vec::with_capacity(length.min(INITIAL_RESERVE));
                frame.extend_from_slice(data);
                self.partial = Some((frame, length));
                Ok(None)
            }
            CONTINUATION => {
                let Some((frame, length)) = self.partial.as_mut() else {
                    return Err(malformed("a continuation without a frame"));
                };
                if frame.len() + body.len() > *length {
                    return Err(malformed("a frame longer than its header says"));
                }
                frame.extend_from_slice(body);
                if frame.len() < *length {
                    return Ok(None);
                }
                Ok(self.partial.take().map(|(frame, _)| frame))
            }
            other => Err(ChannelError::Malformed {
                problem: format!("a data-channel message with the unknown tag {other:#04x}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: &[u8], limit: usize) -> Vec<u8> {
        let mut reassembler = Reassembler::new(1 << 20);
        let messages = split(frame, limit);
        let last = messages.len() - 1;
        let mut out = None;
        for (i, message) in messages.iter().enumerate() {
            assert!(message.len() <= limit);
            let done = reassembler.push(message).expect("push");
            assert_eq!(done.is_some(), i == last, "message {i} of {}", last + 1);
            out = out.or(done);
        }
        assert!(!reassembler.in_frame());
        out.expect("a frame")
    }

    #[test]
    fn frames_of_every_size_come_back_whole() {
        for size in [1, 10, 95, 96, 99, 100, 1000, 12_345] {
            let frame: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            assert_eq!(round_trip(&frame, 100), frame, "size {size}");
        }
        let big = vec![3u8; 3 * MESSAGE_LIMIT + 17];
        assert_eq!(round_trip(&big, MESSAGE_LIMIT), big);
    }

    #[test]
    fn an_announced_length_above_the_limit_is_refused_at_once() {
        let mut reassembler = Reassembler::new(1000);
        let err = reassembler
            .push(&[START, 0, 0, 4, 0, 1])
            .expect_err("too large");
        assert!(
            matches!(err, ChannelError::TooLarge { limit: 1000 }),
            "{err:?}"
        );
    }

    #[test]
    fn messages_that_do_not_fit_the_run_are_malformed() {
        let cases: Vec<Vec<Vec<u8>>> = vec![
            vec![vec![]],
            vec![vec![0x42, 1, 2]],
            vec![vec![CONTINUATION, 1]],
            vec![vec![START, 0, 0]],
            vec![vec![START, 0, 0, 0, 0]],
            vec![vec![START, 0, 0, 0, 2, 1, 2, 3]],
            vec![vec![START, 0, 0, 0, 4, 1], vec![START, 0, 0, 0, 1, 1]],
            vec![vec![START, 0, 0, 0, 4, 1], vec![CONTINUATION, 2, 3, 4, 5]],
        ];
        for case in cases {
            let mut reassembler = Reassembler::new(1000);
            let (last, first) = case.split_last().expect("a case");
            for message in first {
                assert!(reassembler.push(message).expect("fits").is_none());
            }
            let err = reassembler.push(last).expect_err("malformed");
            assert!(
                matches!(err, ChannelError::Malformed { .. }),
                "{case:?}: {err:?}"
            );
        }
    }
}
