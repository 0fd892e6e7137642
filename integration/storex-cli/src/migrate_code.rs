//! The one-time code of a migration over TCP. The sender prints it; the receiver gives it
//! (`--code`) as the first line of every connection, before the fast-sync protocol begins;
//! the sender answers `ok` and serves that connection, or `refused` and waits for the next.
//! So only someone who was told the code receives the database, and a stray connection (a
//! port scan, a browser) neither receives it nor ends the transfer.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use storex_channel_tcp::TcpChannel;
use storex_core::uuid::Uuid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The environment variable both sides read the code from when `--code` is not given.
pub(crate) const CODE_ENV: &str = "STOREX_MIGRATE_CODE";

/// The fewest letters and digits a code chosen with `--code` must have.
pub(crate) const MIN_CODE_CHARS: usize = 8;

/// What the receiver's first line starts with, before the code.
const GREETING: &str = "storex-migrate-code ";

/// The longest first line either side reads: a peer cannot make it read more.
const MAX_LINE: usize = 128;

/// How long the sender waits for a connection's code, and the receiver for the answer to
/// it (longer: the sender may be turning a stray connection away first).
const SENDER_WAIT: Duration = Duration::from_secs(10);
const RECEIVER_WAIT: Duration = Duration::from_secs(30);

/// The sender refused the code the receiver gave.
#[derive(Debug)]
pub(crate) struct CodeRefused(pub(crate) String);

impl std::fmt::Display for CodeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the sender at {} refused the code: give `--code` exactly as the sender printed it",
            self.0
        )
    }
}

impl std::error::Error for CodeRefused {}

/// A new random code: ten letters and digits that are hard to mistake for one another
/// (about 49 random bits), as `abcde-fghjk`.
pub(crate) fn new_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut random = Uuid::new_v4().as_u128();
    let mut code = String::with_capacity(11);
    for i in 0..10 {
        if i == 5 {
            code.push('-');
        }
        let digit = (random % ALPHABET.len() as u128) as usize;
        random /= ALPHABET.len() as u128;
        code.push(char::from(ALPHABET[digit]));
    }
    code
}

/// `code` as compared: lower case, without dashes or spaces (typed either way).
fn normalized(code: &str) -> String {
    code.chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Checks a code given with `--code`: long enough to guess only by luck.
pub(crate) fn checked(code: &str) -> Result<String> {
    let code = code.trim().to_owned();
    let chars = normalized(&code).chars().count();
    if chars < MIN_CODE_CHARS {
        bail!("the code has {chars} letters and digits; it needs at least {MIN_CODE_CHARS}");
    }
    let longest = MAX_LINE - GREETING.len();
    if code.len() > longest {
        bail!("the code is longer than {longest} bytes");
    }
    Ok(code)
}

/// The sender's code: `chosen` once checked, or else a new random one.
pub(crate) fn sender_code(chosen: Option<String>) -> Result<String> {
    chosen.map_or_else(|| Ok(new_code()), |code| checked(&code))
}

/// Whether `given` is `code`, compared in a time that does not tell how much of it matched.
fn same(given: &str, code: &str) -> bool {
    let (given, code) = (normalized(given), normalized(code));
    given.len() == code.len()
        && given
            .bytes()
            .zip(code.bytes())
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
}

/// Reads one line of at most [`MAX_LINE`] bytes, one byte at a time: what follows it is
/// the channel's first frame, which must stay unread.
async fn read_line(stream: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await.context("the connection ended")?;
        if byte == b'\n' {
            return String::from_utf8(line).context("the first line is not text");
        }
        if line.len() == MAX_LINE {
            bail!("the first line is longer than {MAX_LINE} bytes");
        }
        line.push(byte);
    }
}

/// Connects to the sender at `address` and gives it `code`; the channel once the sender
/// took it. A refused code is a [`CodeRefused`].
pub(crate) async fn connect(address: &str, code: &str) -> Result<TcpChannel> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let greeting = format!("{GREETING}{}\n", normalized(code));
    stream
        .write_all(greeting.as_bytes())
        .await
        .with_context(|| format!("giving the code to {address}"))?;
    let answer = tokio::time::timeout(RECEIVER_WAIT, read_line(&mut stream))
        .await
        .with_context(|| format!("{address} did not answer the code"))?
        .with_context(|| format!("{address} did not answer the code"))?;
    match answer.as_str() {
        "ok" => Ok(TcpChannel::new(stream)),
        "refused" => Err(CodeRefused(address.to_owned()).into()),
        _ => bail!("{address} is not a `storex migrate send`"),
    }
}

/// How many connections' codes the sender reads at once; more wait in the listen queue.
const CHECKS_AT_ONCE: usize = 16;

/// Waits on `listener` for a connection that gives `code`; turns the others away (and says
/// so), and keeps waiting through failed accepts. Connections are checked side by side, so
/// that a few that send nothing do not keep the receiver waiting behind them.
pub(crate) async fn accept(listener: &TcpListener, code: &str) -> TcpChannel {
    let mut checking = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if checking.len() < CHECKS_AT_ONCE => match accepted {
                Ok((mut stream, peer)) => {
                    let code = code.to_owned();
                    checking.spawn(async move {
                        match admit(&mut stream, peer, &code).await {
                            Ok(()) => Ok(stream),
                            Err(why) => Err((peer, why)),
                        }
                    });
                }
                Err(e) => {
                    say!("accepting a connection failed ({e}); still waiting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            Some(checked) = checking.join_next(), if !checking.is_empty() => match checked {
                // The other checks end with the set.
                Ok(Ok(stream)) => return TcpChannel::new(stream),
                Ok(Err((peer, why))) => {
                    say!("turned away a connection from {peer} ({why:#}); still waiting")
                }
                Err(failed) => say!("checking a connection failed ({failed}); still waiting"),
            },
        }
    }
}

/// Reads the code `peer` gives and answers it: `Ok` once `ok` was sent.
async fn admit(stream: &mut TcpStream, peer: SocketAddr, code: &str) -> Result<()> {
    let line = tokio::time::timeout(SENDER_WAIT, read_line(stream))
        .await
        .with_context(|| format!("no code within {} s", SENDER_WAIT.as_secs()))??;
    let given = line
        .strip_prefix(GREETING)
        .context("not a storex receiver")?;
    if !same(given, code) {
        let _ = stream.write_all(b"refused\n").await;
        bail!("a wrong code");
    }
    stream
        .write_all(b"ok\n")
        .await
        .with_context(|| format!("answering {peer}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_new_each_time_and_typed_loosely() {
        let (a, b) = (new_code(), new_code());
        assert_ne!(a, b);
        assert_eq!(a.len(), 11);
        assert!(same(&a.to_uppercase().replace('-', " "), &a));
        assert!(!same(&b, &a));
        assert!(!same(&a[..5], &a));
    }

    #[test]
    fn a_chosen_code_must_be_long_enough() {
        assert!(checked("abc-def").is_err());
        assert!(checked("abcd-efgh").is_ok());
        assert!(checked(&"x".repeat(200)).is_err());
    }
}
