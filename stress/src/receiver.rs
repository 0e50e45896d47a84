//! The receiver task of a client: what a connection's writer task does with its channel.

use std::sync::Arc;

use baselines::Inbox;

use crate::client::{Client, Kind};
use crate::subject::Subject;
use crate::tasks::TaskGuard;
use crate::world::World;

/// Drains `rx` the way `client.kind` says, until the channel ends (or, for an abrupt client,
/// until it drops the receiver).
///
/// `_task` comes first because parameters drop in reverse order: the task must count as
/// ended only once its hold on the world is gone, or teardown could see the world still
/// referenced after every task "ended".
pub async fn run<S: Subject>(
    _task: TaskGuard,
    world: Arc<World<S>>,
    client: Arc<Client<S::Id>>,
    mut rx: S::Rx,
) {
    match client.kind {
        Kind::Prompt => {
            while let Some(msg) = rx.recv().await {
                world.accept(&client, msg, true);
            }
        }
        Kind::Late => {
            while let Some(msg) = rx.recv().await {
                world.accept(&client, msg, false);
                if !world.draining() {
                    tokio::time::sleep(world.setup.late_pause).await;
                }
            }
        }
        Kind::Never => {
            client.gone.notified().await;
            while let Some(msg) = rx.recv().await {
                world.accept(&client, msg, false);
            }
        }
        Kind::Abrupt { after } => {
            let deadline = tokio::time::sleep(after);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    biased;
                    msg = rx.recv() => match msg {
                        Some(msg) => world.accept(&client, msg, true),
                        None => return,
                    },
                    () = &mut deadline => break,
                }
            }
            world.abrupt(&client, rx).await;
        }
    }
}
