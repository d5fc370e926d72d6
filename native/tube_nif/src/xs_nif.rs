//! NIFs of `tube_nif` for Xenstore: a connection resource and one generic
//! request call. Replies and watch events are sent from the connection's
//! reader thread.
//!
//! Messages sent to the process that opened the connection:
//! `{tube_xs, Tag, {watch, Path, Token}}` for each watch event and
//! `{tube_xs, Tag, closed}` once when the connection is gone.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rustler::{Binary, Encoder, Env, LocalPid, NifResult, OwnedBinary, OwnedEnv, ResourceArc, Term};
use tube_xs::client::{Client, Error as XsClientError, Watch};
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
    let path = if path.is_empty() {
        tube_xs::client::default_socket_path()
    } else {
        std::path::PathBuf::from(path)
    };
    let connected = tube_xs::client::connect_trusted(&path)
        .map_err(XsClientError::from)
        .and_then(|s| Client::from_stream_with_handler(s, watch_handler(env.pid(), tag)));
    let client = match connected {
        Ok(c) => Arc::new(c),
        Err(e) => return error_term(env, &e),
    };
    let conn = ResourceArc::new(XsConn { client: RwLock::new(Some(client)) });
    (atoms::ok(), conn).encode(env)
}

/// Sends the watch events of a connection, and its end, to `pid`.
fn watch_handler(pid: LocalPid, tag: u64) -> impl FnMut(Watch) + Send + 'static {
    let mut env = OwnedEnv::new();
    move |w| {
        // A panic here would end the reader thread: keep it in.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = env.send_and_clear(&pid, |env| match &w {
                Watch::Event(ev) => {
                    (atoms::tube_xs(), tag, (atoms::watch(), ev.path.as_str(), ev.token.as_str())).encode(env)
                }
                Watch::Closed => (atoms::tube_xs(), tag, atoms::closed()).encode(env),
            });
        }));
    }
}

type XsResult = Result<Vec<u8>, XsClientError>;

fn reply_terms<'a>(env: Env<'a>, results: &[XsResult]) -> Vec<Term<'a>> {
    results
        .iter()
        .map(|r| match r {
            Ok(bytes) => (atoms::ok(), binary(env, bytes)).encode(env),
            Err(e) => error_term(env, e),
        })
        .collect()
}

/// `xs_send(Conn, [{Type, TxId, Payload}], Ref) -> ok`: sends the requests
/// together and returns at once; the daemon handles them in order. When the
/// last reply is in, the caller gets `{tube_xs_reply, Ref, Results}`, one
/// `{ok, Reply} | {error, Reason}` per request, in order. Reason is the
/// Xenstore error in lower case (`enoent`, `eacces`, `eagain`, ...), `closed`,
/// `{io, Text}` or `{protocol, Text}`. Nothing here blocks a scheduler: the
/// socket write is a few hundred bytes, and the replies are sent from the
/// connection's reader thread. At most 256 requests; an unknown type is badarg.
#[rustler::nif]
fn xs_send<'a>(env: Env<'a>, conn: ResourceArc<XsConn>, reqs: Vec<(u32, u32, Binary<'a>)>, reference: Term<'a>) -> NifResult<rustler::Atom> {
    if reqs.len() > 256 || !reference.is_ref() {
        return Err(rustler::Error::BadArg);
    }
    let mut typed = Vec::with_capacity(reqs.len());
    for (ty, tx, payload) in &reqs {
        let ty = MsgType::from_u32(*ty).ok_or(rustler::Error::BadArg)?;
        typed.push((ty, *tx, payload.as_slice()));
    }
    let pid = env.pid();
    // The client calls back on this very thread when nothing could be sent
    // (the connection is gone). An owned env cannot send from a scheduler
    // thread, so such results are sent below with the caller's env instead.
    let caller = std::thread::current().id();
    let same_thread: Arc<Mutex<Option<Vec<XsResult>>>> = Arc::new(Mutex::new(None));
    let stash = same_thread.clone();
    let mut owned = OwnedEnv::new();
    let saved = owned.save(reference);
    let mut reply = move |results: Vec<XsResult>| {
        if std::thread::current().id() == caller {
            *stash.lock() = Some(results);
            return;
        }
        // A panic here would end the reader thread: keep it in.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = owned.send_and_clear(&pid, |env| {
                let terms = reply_terms(env, &results);
                (atoms::tube_xs_reply(), saved.load(env), terms).encode(env)
            });
        }));
    };
    match conn.client.read().clone() {
        Some(client) => client.request_many_then(&typed, reply),
        None => reply(typed.iter().map(|_| Err(XsClientError::Closed)).collect()),
    }
    let done_here = same_thread.lock().take();
    if let Some(results) = done_here {
        let msg = (atoms::tube_xs_reply(), reference, reply_terms(env, &results)).encode(env);
        let _ = env.send(&pid, msg);
    }
    Ok(atoms::ok())
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
