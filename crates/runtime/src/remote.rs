//! Jobs for the loop thread from other threads (the control API), so that a network's
//! state is only ever touched by its own thread. Generic over what the loop lends a job
//! (the network), which this module does not need to know.

use std::sync::{mpsc, Arc};

use mio::{Registry, Token};

/// Work for the loop thread, sent by another thread.
pub(crate) type Job<N> = Box<dyn FnOnce(&mut N) + Send>;

/// The network stopped before it could answer.
#[derive(Debug, thiserror::Error)]
#[error("the network has stopped")]
pub struct NetworkStopped;

/// Runs code on a loop thread from other threads; `N` is what each job is given.
pub struct Remote<N> {
    jobs: mpsc::Sender<Job<N>>,
    waker: Arc<mio::Waker>,
}

impl<N> Clone for Remote<N> {
    fn clone(&self) -> Self {
        Self { jobs: self.jobs.clone(), waker: Arc::clone(&self.waker) }
    }
}

impl<N: 'static> Remote<N> {
    /// A handle whose jobs arrive on the returned receiver, waking `registry` with
    /// `token`.
    pub(crate) fn new(registry: &Registry, token: Token) -> std::io::Result<(Self, mpsc::Receiver<Job<N>>)> {
        let waker = mio::Waker::new(registry, token)?;
        let (jobs, receiver) = mpsc::channel();
        Ok((Self { jobs, waker: Arc::new(waker) }, receiver))
    }

    /// Runs `f` on the loop between two events and returns what it returned.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut N) -> T + Send + 'static,
    ) -> Result<T, NetworkStopped> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job<N> = Box::new(move |target| {
            let _ = reply.send(f(target));
        });
        self.jobs.send(job).map_err(|_| NetworkStopped)?;
        self.waker.wake().map_err(|_| NetworkStopped)?;
        answer.recv().map_err(|_| NetworkStopped)
    }
}
