//! NIFs of `tube_nif` for Xenstore: a connection resource, one generic
//! request call, and a thread per connection that forwards watch events.
//!
//! Messages sent to the process that opened the connection:
//! `{tube_xs, Tag, {watch, Path, Token}}` for each watch event and
//! `{tube_xs, Tag, closed}` once when the connection is gone.

use std::sync::Arc;

use parking_lot::RwLock;
use rustler::{Binary, Encoder, Env, LocalPid, NifResult, OwnedBinary, OwnedEnv, ResourceArc, Term};
use tube_xs::client::{Client, Error as XsClientError};
use tube_xs::wire::MsgType;

use crate::atoms;

/// A Xenstore connection owned by an Erlang process.
pub struct XsConn {
    client: RwLock<Option<Arc<Client>>>,
}

#[rustler::resource_impl]
impl rustler::Resource for XsConn {}

fn error_term<'a>(env: Env<'a>, e: &XsClientError) -> Term<'a> {
    let reason = match e {
        XsClientError::Xs(x) => rustler::Atom::from_str(env, &x.as_str().to_ascii_lowercase())
            .map(|a| a.encode(env))
            .unwrap_or_else(|_| atoms::protocol().encode(env)),
        XsClientError::Closed => atoms::closed().encode(env),
        XsClientError::Io(io) => (atoms::io(), io.to_string()).encode(env),
        XsClientError::Protocol(p) => (atoms::protocol(), p.as_str()).encode(env),
    };
    (atoms::error(), reason).encode(env)
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    match OwnedBinary::new(bytes.len()) {
        Some(mut b) => {
            b.as_mut_slice().copy_from_slice(bytes);
            b.release(env).encode(env)
        }
        None => (atoms::error(), atoms::enomem()).encode(env),
    }
}

/// `xs_open(Path, Tag) -> {ok, Conn} | {error, Reason}`. An empty path
/// means the default socket (`XENSTORED_PATH`, else the per-user one). Tag
/// is an integer that marks this connection's messages.
#[rustler::nif(schedule = "DirtyIo")]
fn xs_open(env: Env<'_>, path: String, tag: u64) -> Term<'_> {
    let connected = if path.is_empty() {
        Client::connect_default()
    } else {
        Client::connect(std::path::Path::new(&path))
    };
    let client = match connected {
        Ok(c) => Arc::new(c),
        Err(e) => return error_term(env, &e),
    };
    if let Err(e) = spawn_forwarder(env.pid(), &client, tag) {
        return (atoms::error(), (atoms::io(), e.to_string())).encode(env);
    }
    let conn = ResourceArc::new(XsConn { client: RwLock::new(Some(client)) });
    (atoms::ok(), conn).encode(env)
}

/// Forwards watch events of `client` to `pid` until the connection ends.
fn spawn_forwarder(pid: LocalPid, client: &Client, tag: u64) -> std::io::Result<()> {
    let events = client.events();
    let body = move || {
        let mut env = OwnedEnv::new();
        for ev in events.iter() {
            let sent = env.send_and_clear(&pid, |env| {
                (atoms::tube_xs(), tag, (atoms::watch(), ev.path.as_str(), ev.token.as_str())).encode(env)
            });
            if sent.is_err() {
                return; // the owner is gone: nobody to tell
            }
        }
        let _ = env.send_and_clear(&pid, |env| (atoms::tube_xs(), tag, atoms::closed()).encode(env));
    };
    std::thread::Builder::new()
        .name("tube_xs_watch".into())
        .spawn(move || {
            // A panic here must not reach the emulator; the owner then
            // simply sees no more events, as after a close.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        })
        .map(drop)
}

/// `xs_request(Conn, Type, TxId, Payload) -> {ok, Reply} | {error, Reason}`.
/// Reason is the Xenstore error in lower case (`enoent`, `eacces`, `eagain`,
/// ...), `closed`, `{io, Text}` or `{protocol, Text}`.
#[rustler::nif(schedule = "DirtyIo")]
fn xs_request<'a>(env: Env<'a>, conn: ResourceArc<XsConn>, ty: u32, tx: u32, payload: Binary<'a>) -> NifResult<Term<'a>> {
    let Some(ty) = MsgType::from_u32(ty) else {
        return Err(rustler::Error::BadArg);
    };
    let Some(client) = conn.client.read().clone() else {
        return Ok((atoms::error(), atoms::closed()).encode(env));
    };
    match client.request(ty, tx, payload.as_slice()) {
        Ok(reply) => Ok((atoms::ok(), binary(env, &reply)).encode(env)),
        Err(e) => Ok(error_term(env, &e)),
    }
}

/// `xs_batch(Conn, [{Type, TxId, Payload}]) -> [{ok, Reply} | {error, Reason}]`:
/// the requests go out together and the daemon handles them in order, so
/// this is `xs_request/4` for each, in one round trip. At most 256 requests.
#[rustler::nif(schedule = "DirtyIo")]
fn xs_batch<'a>(env: Env<'a>, conn: ResourceArc<XsConn>, reqs: Vec<(u32, u32, Binary<'a>)>) -> NifResult<Term<'a>> {
    if reqs.len() > 256 {
        return Err(rustler::Error::BadArg);
    }
    let mut typed = Vec::with_capacity(reqs.len());
    for (ty, tx, payload) in &reqs {
        let ty = MsgType::from_u32(*ty).ok_or(rustler::Error::BadArg)?;
        typed.push((ty, *tx, payload.as_slice()));
    }
    let Some(client) = conn.client.read().clone() else {
        let closed = (atoms::error(), atoms::closed()).encode(env);
        return Ok(vec![closed; typed.len()].encode(env));
    };
    let results: Vec<Term<'a>> = client
        .request_many(&typed)
        .into_iter()
        .map(|r| match r {
            Ok(reply) => (atoms::ok(), binary(env, &reply)).encode(env),
            Err(e) => error_term(env, &e),
        })
        .collect();
    Ok(results.encode(env))
}

/// `xs_close(Conn) -> ok`. Drops this handle; the socket closes once no
/// request is in flight on it.
#[rustler::nif]
fn xs_close(conn: ResourceArc<XsConn>) -> rustler::Atom {
    conn.client.write().take();
    atoms::ok()
}

/// `xs_default_path() -> binary()`: where the daemon is looked for.
#[rustler::nif]
fn xs_default_path() -> String {
    tube_xs::client::default_socket_path().to_string_lossy().into_owned()
}
