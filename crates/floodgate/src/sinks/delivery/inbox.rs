//! What a delivering sink receives, and the shutdown clock that comes with it.
//!
//! Every delivery loop takes its input from a channel (flush payloads, an aggregator's shares,
//! syslog chunks) and must keep taking it while it waits on the destination (a back-off, a
//! slow write), so nothing upstream is held up by a destination that is down. The channel
//! closes at shutdown; from then on the sink has `drain` to hand on what it holds, whether
//! or not the destination answers, so a destination that accepts but never reads cannot hold
//! the shutdown up. [`Inbox`] is that channel plus that clock, written once.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// A channel a sink receives from (bounded or not).
pub trait Receive<T>: Send {
    /// The next entry; `None` once every sender is gone.
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send;
    /// The next entry if one is waiting: `Err(true)` once every sender is gone.
    fn try_recv(&mut self) -> Result<T, bool>;
}

impl<T: Send> Receive<T> for mpsc::Receiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        mpsc::Receiver::recv(self)
    }
    fn try_recv(&mut self) -> Result<T, bool> {
        mpsc::Receiver::try_recv(self).map_err(|e| e == mpsc::error::TryRecvError::Disconnected)
    }
}

impl<T: Send> Receive<T> for mpsc::UnboundedReceiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }
    fn try_recv(&mut self) -> Result<T, bool> {
        mpsc::UnboundedReceiver::try_recv(self).map_err(|e| e == mpsc::error::TryRecvError::Disconnected)
    }
}

/// A sink's input and its shutdown drain.
pub struct Inbox<R> {
    rx: R,
    /// How long the sink may go on delivering once its input has closed.
    drain: Duration,
    /// When the input closed.
    closed_at: Option<Instant>,
}

impl<R> Inbox<R> {
    /// Input from `rx`, with `drain` to finish once it closes.
    pub fn new(rx: R, drain: Duration) -> Inbox<R> {
        Inbox { rx, drain, closed_at: None }
    }

    /// The input has closed: the sink is finishing.
    pub fn closing(&self) -> bool {
        self.closed_at.is_some()
    }

    /// When the drain ends; `None` while the input is open.
    pub fn drain_ends(&self) -> Option<Instant> {
        self.closed_at.map(|t| t + self.drain)
    }

    /// The drain has ended: what is still held is kept on disk or lost.
    pub fn drain_over(&self) -> bool {
        self.drain_ends().is_some_and(|end| Instant::now() >= end)
    }

    /// How long one attempt (a connect, a write) may take: `usual`, but no longer than the
    /// drain has left (a millisecond at least).
    pub fn patience(&self, usual: Duration) -> Duration {
        match self.drain_ends() {
            Some(end) => usual.min(end.saturating_duration_since(Instant::now())).max(Duration::from_millis(1)),
            None => usual,
        }
    }

    /// Resolves when the drain ends; never while the input is open.
    pub fn until_drain_over(&self) -> impl Future<Output = ()> + Send + 'static {
        let end = self.drain_ends();
        async move {
            match end {
                Some(end) => tokio::time::sleep_until(end).await,
                None => std::future::pending().await,
            }
        }
    }

    fn closed(&mut self) {
        self.closed_at.get_or_insert_with(Instant::now);
    }
}

impl<R> Inbox<R> {
    /// The next entry, waiting for it; `None` (now and from then on) once the input has
    /// closed, which starts the drain.
    pub async fn next<T>(&mut self) -> Option<T>
    where
        R: Receive<T>,
    {
        if self.closing() {
            return None;
        }
        let entry = self.rx.recv().await;
        if entry.is_none() {
            self.closed();
        }
        entry
    }

    /// One entry already waiting, without waiting (`None` if none is, or the input closed).
    /// A sink whose destination is slow but working takes input only while it has room, so
    /// the listeners wait (TCP senders are slowed) instead of anything accepted being dropped.
    pub fn try_take<T>(&mut self) -> Option<T>
    where
        R: Receive<T>,
    {
        if self.closing() {
            return None;
        }
        match self.rx.try_recv() {
            Ok(entry) => Some(entry),
            Err(closed) => {
                if closed {
                    self.closed();
                }
                None
            }
        }
    }

    /// Every entry already waiting, handed to `take`, without waiting.
    pub fn take_ready<T>(&mut self, mut take: impl FnMut(T))
    where
        R: Receive<T>,
    {
        while !self.closing() {
            match self.rx.try_recv() {
                Ok(entry) => take(entry),
                Err(true) => self.closed(),
                Err(false) => break,
            }
        }
    }

    /// Waits `wait` (cut short by the drain's end), handing `take` whatever arrives meanwhile.
    pub async fn wait<T>(&mut self, wait: Duration, mut take: impl FnMut(T))
    where
        R: Receive<T>,
    {
        let mut end = Instant::now() + wait;
        loop {
            if let Some(drain_end) = self.drain_ends() {
                end = end.min(drain_end);
            }
            tokio::select! {
                entry = self.rx.recv(), if !self.closing() => match entry {
                    Some(entry) => take(entry),
                    None => self.closed(),
                },
                _ = tokio::time::sleep_until(end) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_takes_what_arrives_and_a_close_starts_the_drain() {
        let (tx, rx) = mpsc::unbounded_channel::<u32>();
        let mut inbox = Inbox::new(rx, Duration::from_secs(5));
        tx.send(1).unwrap();
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(2).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Dropped: the input closes at 2 s.
        });
        let start = Instant::now();
        let mut taken = Vec::new();
        inbox.wait(Duration::from_secs(3), |e| taken.push(e)).await;
        assert_eq!(taken, [1, 2]);
        assert_eq!(start.elapsed(), Duration::from_secs(3), "the wait is not cut short by the close");
        sender.await.unwrap();
        assert!(inbox.closing());
        assert_eq!(inbox.drain_ends(), Some(start + Duration::from_secs(7)));
        assert_eq!(inbox.patience(Duration::from_secs(10)), Duration::from_secs(4));
        // A long wait ends with the drain.
        inbox.wait(Duration::from_secs(60), |_| unreachable!()).await;
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        assert!(inbox.drain_over());
        assert_eq!(inbox.patience(Duration::from_secs(10)), Duration::from_millis(1));
        assert_eq!(inbox.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_entries_are_taken_without_waiting_and_the_drain_never_ends_while_open() {
        let (tx, rx) = mpsc::channel::<u32>(8);
        let mut inbox = Inbox::new(rx, Duration::from_secs(5));
        for i in 0..3 {
            tx.send(i).await.unwrap();
        }
        let mut taken = Vec::new();
        inbox.take_ready(|e| taken.push(e));
        assert_eq!(taken, [0, 1, 2]);
        assert!(!inbox.closing());
        assert!(tokio::time::timeout(Duration::from_secs(3600), inbox.until_drain_over()).await.is_err());
        drop(tx);
        inbox.take_ready(|_: u32| unreachable!());
        assert!(inbox.closing());
        let start = Instant::now();
        inbox.until_drain_over().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
