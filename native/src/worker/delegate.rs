//! Calls the front hands to Python: everything off the warm path (a model not resident, a
//! version named by alias, WorkerAdmin, model readiness and metadata) and the outcomes Python
//! keeps the books on (a failed or hung prediction).
//!
//! The front never takes the GIL. Jobs wait in a bounded queue; a Python thread takes them
//! (`next`, which blocks with the GIL released) and hands each to the event loop, which
//! answers through the job's reply. A full queue, or no Python taking jobs, is UNAVAILABLE:
//! the router tries another worker.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::rpc::grpc::Code;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Python's answer to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: Code,
    pub message: String,
    /// The response message (unframed), for OK.
    pub body: Bytes,
    /// The `shoal-retry` trailer to add (`elsewhere`, `nowhere`), if any.
    pub retry: Option<&'static str>,
}

impl Reply {
    pub fn failure(code: Code, message: impl Into<String>) -> Reply {
        Reply {
            code,
            message: message.into(),
            body: Bytes::new(),
            retry: None,
        }
    }
}

/// One job for Python: a method (`ModelInfer`, `WorkerAdmin/LoadModel`, `outcome`, ...), its
/// request bytes, the caller's remaining time, and where to answer (none for outcomes).
pub struct Job {
    pub method: String,
    pub payload: Bytes,
    pub deadline: Option<Instant>,
    pub reply: Option<oneshot::Sender<Reply>>,
}

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

pub struct Delegate {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
}

impl Delegate {
    pub fn new(capacity: usize) -> Delegate {
        Delegate {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn push(&self, job: Job) -> Result<(), Job> {
        let mut q = lock(&self.queue);
        if q.closed || q.jobs.len() >= self.capacity {
            return Err(job);
        }
        q.jobs.push_back(job);
        drop(q);
        self.ready.notify_one();
        Ok(())
    }

    /// Ask Python; its reply, or UNAVAILABLE when it cannot take the call.
    pub async fn call(&self, method: &str, payload: Bytes, deadline: Option<Instant>) -> Reply {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            method: method.to_string(),
            payload,
            deadline,
            reply: Some(tx),
        };
        if self.push(job).is_err() {
            return Reply::failure(
                Code::Unavailable,
                "this worker is overloaded (its control queue is full); try another",
            );
        }
        rx.await.unwrap_or_else(|_| {
            Reply::failure(
                Code::Unavailable,
                "this worker is shutting down; the call was not answered",
            )
        })
    }

    /// Tell Python something (no answer expected); dropped when the queue is full.
    pub fn notify(&self, method: &str, payload: Bytes) -> bool {
        self.push(Job {
            method: method.to_string(),
            payload,
            deadline: None,
            reply: None,
        })
        .is_ok()
    }

    /// The next job, waiting at most `timeout`; None on timeout or once closed and empty.
    pub fn next(&self, timeout: Duration) -> Option<Job> {
        let until = Instant::now() + timeout;
        let mut q = lock(&self.queue);
        loop {
            if let Some(job) = q.jobs.pop_front() {
                return Some(job);
            }
            if q.closed {
                return None;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            q = self
                .ready
                .wait_timeout(q, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Refuse new jobs and wake the taker; jobs still queued are dropped (their callers get
    /// UNAVAILABLE).
    pub fn close(&self) {
        let mut q = lock(&self.queue);
        q.closed = true;
        q.jobs.clear();
        drop(q);
        self.ready.notify_all();
    }

    pub fn queued(&self) -> usize {
        lock(&self.queue).jobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_call_is_answered_by_whoever_takes_it() {
        let d = Arc::new(Delegate::new(4));
        let taker = {
            let d = d.clone();
            std::thread::spawn(move || {
                let job = d.next(Duration::from_secs(5)).unwrap();
                assert_eq!(job.method, "ModelInfer");
                assert_eq!(&job.payload[..], b"req");
                let _ = job.reply.unwrap().send(Reply {
                    code: Code::Ok,
                    message: String::new(),
                    body: Bytes::from_static(b"resp"),
                    retry: None,
                });
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let reply = rt.block_on(d.call("ModelInfer", Bytes::from_static(b"req"), None));
        taker.join().unwrap();
        assert_eq!(reply.code, Code::Ok);
        assert_eq!(&reply.body[..], b"resp");
    }

    #[test]
    fn a_full_or_closed_queue_is_unavailable() {
        let d = Delegate::new(1);
        assert!(d.notify("outcome", Bytes::new()));
        assert!(!d.notify("outcome", Bytes::new()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let reply = rt.block_on(d.call("ModelInfer", Bytes::new(), None));
        assert_eq!(reply.code, Code::Unavailable);
        d.close();
        assert!(d.next(Duration::from_millis(1)).is_none());
        assert_eq!(d.queued(), 0);
    }
}
