//! Request bodies sent twice: what [`RetryUnauthorized`](super::RetryUnauthorized) keeps of a
//! body so that it can resend it after a rejected token.
//!
//! A body is not read ahead of the first attempt: that would add latency and would never end
//! for a streaming call whose next message waits on the response. The first attempt's body is
//! recorded as the inner service sends it, up to a limit; the retry sends the recording. A body
//! larger than the limit, one that failed, or one the inner service had not sent in full by the
//! time the rejection arrived is not resent: the rejection goes back to the caller.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The default most bytes of a request body kept to resend it: 64 KiB.
pub const DEFAULT_REPLAY_LIMIT: usize = 64 * 1024;

/// A request body type [`RetryUnauthorized`](super::RetryUnauthorized) can send a second time.
///
/// Implemented for the body types of tonic (`tonic::body::Body`, crate feature `tonic`), axum
/// (`axum::body::Body`, feature `axum`), http-body-util (`Full`, `Empty`, `BoxBody`,
/// `UnsyncBoxBody`), for `String`, `Bytes`, `Vec<u8>`, `&'static str`, `&'static [u8]` and
/// `()` (copied), and for `hyper::body::Incoming` (never resent: it cannot be rebuilt; box
/// it into a `BoxBody` to take part).
///
/// For a body type of your own, record it as it is sent and rebuild it from the recording with
/// [`Replay::record`], or keep a copy with [`Replay::copy`]:
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::combinators::UnsyncBoxBody;
/// use http_body_util::BodyExt;
/// use tower_client_credentials::retry::{Replay, ReplayableBody};
///
/// /// An application's body type: a boxed stream of bytes.
/// struct AppBody(UnsyncBoxBody<Bytes, std::io::Error>);
/// # impl http_body::Body for AppBody {
/// #     type Data = Bytes;
/// #     type Error = std::io::Error;
/// #     fn poll_frame(
/// #         mut self: std::pin::Pin<&mut Self>,
/// #         cx: &mut std::task::Context<'_>,
/// #     ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
/// #         std::pin::Pin::new(&mut self.0).poll_frame(cx)
/// #     }
/// # }
///
/// impl ReplayableBody for AppBody {
///     fn prepare_replay(self, limit: usize) -> (Self, Replay<Self>) {
///         Replay::record(self, limit, |body| AppBody(body.boxed_unsync()))
///     }
/// }
/// ```
pub trait ReplayableBody: Sized {
    /// Returns the body to send now and what a second attempt needs to send it again. `limit`
    /// is the most bytes this may keep for that; beyond it, return [`Replay::unavailable`].
    fn prepare_replay(self, limit: usize) -> (Self, Replay<Self>);
}

/// What a second attempt needs to send a request body again: a copy, a recording of the
/// first attempt's body, or nothing. Made by [`ReplayableBody::prepare_replay`].
pub struct Replay<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    Unavailable,
    Copy(B),
    Recorded {
        recording: Arc<Mutex<Recording>>,
        rebuild: fn(RetryBody<B>) -> B,
    },
}

impl<B> Replay<B> {
    /// The body cannot be sent again: a rejection of the request goes back to the caller.
    pub fn unavailable() -> Self {
        Replay {
            kind: Kind::Unavailable,
        }
    }

    /// The second attempt sends `copy`.
    pub fn copy(copy: B) -> Self {
        Replay {
            kind: Kind::Copy(copy),
        }
    }

    /// Records `body` while the first attempt sends it, up to `limit` bytes; the second attempt
    /// sends the recording. `rebuild` makes a `B` of the crate's body for either attempt
    /// (`tonic::body::Body::new`, `axum::body::Body::new`, `BodyExt::boxed`...).
    ///
    /// A body whose size hint already says it is larger than `limit` is sent as it is and not
    /// recorded.
    pub fn record(body: B, limit: usize, rebuild: fn(RetryBody<B>) -> B) -> (B, Self)
    where
        B: Body,
    {
        if body.size_hint().lower() > limit as u64 {
            return (body, Replay::unavailable());
        }
        let recording = Arc::new(Mutex::new(Recording {
            limit,
            data: Vec::new(),
            len: 0,
            trailers: None,
            state: if body.is_end_stream() {
                State::Complete
            } else {
                State::Open
            },
        }));
        let first = RetryBody {
            inner: Inner::Recording {
                body,
                recording: recording.clone(),
            },
        };
        (
            rebuild(first),
            Replay {
                kind: Kind::Recorded { recording, rebuild },
            },
        )
    }

    /// The body for the second attempt, if the first one's can be sent again.
    pub(super) fn into_body(self) -> Option<B> {
        match self.kind {
            Kind::Unavailable => None,
            Kind::Copy(body) => Some(body),
            Kind::Recorded { recording, rebuild } => {
                let recording = recording.lock().unwrap_or_else(PoisonError::into_inner);
                if recording.state != State::Complete {
                    return None;
                }
                Some(rebuild(RetryBody {
                    inner: Inner::Replaying {
                        data: recording.data.iter().cloned().collect(),
                        trailers: recording.trailers.clone(),
                    },
                }))
            }
        }
    }
}

impl<B> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Unavailable => "unavailable",
            Kind::Copy(_) => "copy",
            Kind::Recorded { .. } => "recorded",
        };
        f.debug_tuple("Replay").field(&kind).finish()
    }
}

/// The first attempt's body as it was sent.
struct Recording {
    limit: usize,
    data: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Still being sent.
    Open,
    /// Sent in full and within the limit: can be sent again.
    Complete,
    /// Larger than the limit, or failed: cannot.
    Abandoned,
}

impl Recording {
    fn frame(&mut self, frame: &Frame<Bytes>) {
        if self.state != State::Open {
            return;
        }
        if let Some(data) = frame.data_ref() {
            self.len = self.len.saturating_add(data.len());
            if self.len > self.limit {
                self.abandon();
            } else {
                self.data.push(data.clone());
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
    }

    fn abandon(&mut self) {
        self.state = State::Abandoned;
        self.data = Vec::new();
        self.trailers = None;
    }

    fn end(&mut self) {
        if self.state == State::Open {
            self.state = State::Complete;
        }
    }
}

pin_project! {
    /// A request body of [`RetryUnauthorized`](super::RetryUnauthorized): the first attempt's
    /// body, recorded as it is sent, or the recording sent again. Its data is [`Bytes`] and its
    /// error the original body's.
    pub struct RetryBody<B> {
        #[pin]
        inner: Inner<B>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<B> {
        Recording {
            #[pin]
            body: B,
            recording: Arc<Mutex<Recording>>,
        },
        Replaying {
            data: VecDeque<Bytes>,
            trailers: Option<HeaderMap>,
        },
    }
}

impl<B> Body for RetryBody<B>
where
    B: Body,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            InnerProj::Recording {
                mut body,
                recording,
            } => {
                let polled = match body.as_mut().poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(polled) => polled,
                };
                let recording_handle: &Arc<Mutex<Recording>> = recording;
                let mut recording = recording.lock().unwrap_or_else(PoisonError::into_inner);
                // The retry's side was dropped (the response was no rejection, or the retry
                // gave up): nobody will read the recording, so a long stream keeps none of it.
                if Arc::strong_count(recording_handle) == 1 {
                    recording.abandon();
                }
                match polled {
                    Some(Ok(frame)) => {
                        let frame = frame.map_data(|mut data| data.copy_to_bytes(data.remaining()));
                        recording.frame(&frame);
                        if body.is_end_stream() {
                            recording.end();
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(error)) => {
                        recording.abandon();
                        Poll::Ready(Some(Err(error)))
                    }
                    None => {
                        recording.end();
                        Poll::Ready(None)
                    }
                }
            }
            InnerProj::Replaying { data, trailers } => {
                if let Some(chunk) = data.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Recording { body, recording } => {
                let end = body.is_end_stream();
                if end {
                    // A sender may stop at `is_end_stream` without polling for the end.
                    recording
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .end();
                }
                end
            }
            Inner::Replaying { data, trailers } => data.is_empty() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Recording { body, .. } => body.size_hint(),
            Inner::Replaying { data, .. } => {
                SizeHint::with_exact(data.iter().map(|d| d.len() as u64).sum())
            }
        }
    }
}

impl<B> fmt::Debug for RetryBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attempt = match &self.inner {
            Inner::Recording { .. } => "first",
            Inner::Replaying { .. } => "replay",
        };
        f.debug_struct("RetryBody")
            .field("attempt", &attempt)
            .finish_non_exhaustive()
    }
}

/// Bodies resent as a copy, when they are at most the limit.
macro_rules! replay_by_copy {
    ($($ty:ty => $len:expr;)*) => {$(
        impl ReplayableBody for $ty {
            fn prepare_replay(self, limit: usize) -> (Self, Replay<Self>) {
                let len: fn(&Self) -> usize = $len;
                if len(&self) > limit {
                    return (self, Replay::unavailable());
                }
                let copy = self.clone();
                (self, Replay::copy(copy))
            }
        }
    )*};
}

replay_by_copy! {
    () => |_| 0;
    String => String::len;
    Bytes => Bytes::len;
    Vec<u8> => Vec::len;
    &'static str => |s| s.len();
    &'static [u8] => |s| s.len();
}

impl<D: Buf + Clone> ReplayableBody for http_body_util::Full<D> {
    fn prepare_replay(self, limit: usize) -> (Self, Replay<Self>) {
        if self.size_hint().lower() > limit as u64 {
            return (self, Replay::unavailable());
        }
        let copy = self.clone();
        (self, Replay::copy(copy))
    }
}

impl<D> ReplayableBody for http_body_util::Empty<D> {
    fn prepare_replay(self, _limit: usize) -> (Self, Replay<Self>) {
        (self, Replay::copy(http_body_util::Empty::new()))
    }
}

impl<E> ReplayableBody for http_body_util::combinators::BoxBody<Bytes, E>
where
    E: 'static,
{
    fn prepare_replay(self, limit: usize) -> (Self, Replay<Self>) {
        Replay::record(self, limit, http_body_util::combinators::BoxBody::new)
    }
}

impl<E> ReplayableBody for http_body_util::combinators::UnsyncBoxBody<Bytes, E>
where
    E: 'static,
{
    fn prepare_replay(self, limit: usize) -> (Self, Replay<Self>) {
        Replay::record(self, limit, http_body_util::combinators::UnsyncBoxBody::new)
    }
}

impl ReplayableBody for hyper::body::Incoming {
    fn prepare_replay(self, _limit: usize) -> (Self, Replay<Self>) {
        (self, Replay::unavailable())
    }
}

#[cfg(feature = "tonic")]
impl ReplayableBody for tonic::body::Body {
    fn prepare_replay(self, limit: usize) -> (Self, Replay<Self>) {
        Replay::record(self, limit, tonic::body::Body::new)
    }
}

#[cfg(feature = "axum")]
impl ReplayableBody for axum_core::body::Body {
    fn prepare_replay(self, limit: usize) -> (Self, Replay<Self>) {
        Replay::record(self, limit, axum_core::body::Body::new)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    type Boxed = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

    /// A streamed body of unknown size: ready frames, one per poll.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn streamed(chunks: &[&'static str], trailers: bool) -> Boxed {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c.as_bytes())))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", "0".parse().unwrap());
            frames.push_back(Frame::trailers(t));
        }
        Frames(frames).boxed_unsync()
    }

    #[tokio::test]
    async fn a_body_sent_in_full_is_replayed_with_its_trailers() {
        let (first, replay) = streamed(&["a", "bc", "def"], true).prepare_replay(1024);
        let sent = first.collect().await.unwrap();
        assert_eq!(sent.trailers().map(|t| t.len()), Some(1));
        assert_eq!(sent.to_bytes(), "abcdef");
        let again = replay
            .into_body()
            .expect("replayable")
            .collect()
            .await
            .unwrap();
        assert_eq!(again.trailers().map(|t| t.len()), Some(1));
        assert_eq!(again.to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_or_not_sent_in_full_is_not_replayed() {
        let (first, replay) = streamed(&["abc", "def"], false).prepare_replay(5);
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcdef");
        assert!(replay.into_body().is_none());

        let (mut first, replay) = streamed(&["abc", "def"], false).prepare_replay(1024);
        let frame = std::future::poll_fn(|cx| Pin::new(&mut first).poll_frame(cx)).await;
        assert!(frame.is_some());
        drop(first); // the inner service stopped sending half-way
        assert!(replay.into_body().is_none());

        let (_, replay) = http_body_util::Full::new(Bytes::from(vec![0; 65])).prepare_replay(64);
        assert!(replay.into_body().is_none());
    }

    #[tokio::test]
    async fn copies_and_empty_bodies() {
        let (first, replay) = http_body_util::Full::new(Bytes::from_static(b"x")).prepare_replay(1);
        assert_eq!(first.collect().await.unwrap().to_bytes(), "x");
        let again = replay.into_body().unwrap();
        assert_eq!(again.collect().await.unwrap().to_bytes(), "x");
        // An empty recorded body is complete before anyone polls it.
        let (_first, replay) = Boxed::default().prepare_replay(0);
        assert!(replay.into_body().unwrap().is_end_stream());
        assert_eq!(String::from("ab").prepare_replay(1).1.into_body(), None);
    }
}
