%% @doc A Xenstore client for Erlang, over the native client in tube_nif.
%%
%% Paths and values are binaries or strings. Errors are `{error, Reason}`
%% with Xenstore's error names in lower case (`enoent', `eacces', `eagain',
%% `einval', ...), `closed' when the connection is gone.
%%
%% Watch events arrive at the process that called {@link open/2} as
%% `{tube_xs, Tag, {watch, Path, Token}}'; when the connection ends it gets
%% `{tube_xs, Tag, closed}' once.
-module(tube_xs).

-export([open/2, close/1, default_path/0]).
-export([read/2, read/3, write/3, write/4, mkdir/2, mkdir/3, rm/2, rm/3,
         directory/2, directory/3, get_perms/2, get_perms/3,
         set_perms/3, set_perms/4, watch/3, unwatch/3,
         transaction_start/1, transaction_end/3, transaction/2, transaction/3,
         introduce_self/2, is_domain_introduced/2, get_domain_path/2, release/2,
         batch/2, send/2, results/2, named/3]).
-export([format_perms/1, parse_perms/1]).

-export_type([conn/0, perm/0, access/0]).

-opaque conn() :: reference().
-type tx() :: non_neg_integer().
-type access() :: none | read | write | both.
-type perm() :: {access(), non_neg_integer()}.

%% Message types of Xen's xs_wire.h.
-define(XS_DIRECTORY, 1).
-define(XS_READ, 2).
-define(XS_GET_PERMS, 3).
-define(XS_WATCH, 4).
-define(XS_UNWATCH, 5).
-define(XS_TRANSACTION_START, 6).
-define(XS_TRANSACTION_END, 7).
-define(XS_INTRODUCE, 8).
-define(XS_RELEASE, 9).
-define(XS_GET_DOMAIN_PATH, 10).
-define(XS_WRITE, 11).
-define(XS_MKDIR, 12).
-define(XS_RM, 13).
-define(XS_SET_PERMS, 14).
-define(XS_IS_DOMAIN_INTRODUCED, 17).

%% How long a request may wait for the daemon's reply, in milliseconds.
-define(REPLY_TIMEOUT, 10000).

%% How often a transaction is retried when the daemon answers `eagain'.
-define(TX_RETRIES, 20).

%% @doc Connects to the daemon at Path ("" = `XENSTORED_PATH' or the
%% per-user default). Tag marks this connection's messages.
-spec open(iodata(), non_neg_integer()) -> {ok, conn()} | {error, term()}.
open(Path, Tag) ->
    tube_nif:xs_open(unicode:characters_to_binary(Path), Tag).

-spec close(conn()) -> ok.
close(Conn) -> tube_nif:xs_close(Conn).

%% @doc The socket path used when none is given.
-spec default_path() -> binary().
default_path() -> unicode:characters_to_binary(tube_nif:xs_default_path()).

read(C, P) -> read(C, 0, P).
read(C, Tx, P) -> req(C, ?XS_READ, Tx, [P, 0]).

write(C, P, V) -> write(C, 0, P, V).
write(C, Tx, P, V) -> ok(req(C, ?XS_WRITE, Tx, [P, 0, V])).

mkdir(C, P) -> mkdir(C, 0, P).
mkdir(C, Tx, P) -> ok(req(C, ?XS_MKDIR, Tx, [P, 0])).

rm(C, P) -> rm(C, 0, P).
rm(C, Tx, P) -> ok(req(C, ?XS_RM, Tx, [P, 0])).

directory(C, P) -> directory(C, 0, P).
directory(C, Tx, P) ->
    case req(C, ?XS_DIRECTORY, Tx, [P, 0]) of
        {ok, Bin} -> {ok, fields(Bin)};
        E -> E
    end.

%% @doc Permissions as `[{Access, Domid}]', owner first.
get_perms(C, P) -> get_perms(C, 0, P).
get_perms(C, Tx, P) ->
    case req(C, ?XS_GET_PERMS, Tx, [P, 0]) of
        {ok, Bin} -> parse_perms(Bin);
        E -> E
    end.

set_perms(C, P, Perms) -> set_perms(C, 0, P, Perms).
set_perms(C, Tx, P, Perms) ->
    ok(req(C, ?XS_SET_PERMS, Tx, [P, 0, format_perms(Perms)])).

watch(C, P, Token) -> one(C, {watch, P, Token}).
unwatch(C, P, Token) -> one(C, {unwatch, P, Token}).

-spec transaction_start(conn()) -> {ok, tx()} | {error, term()}.
transaction_start(C) -> one(C, transaction_start).

-spec transaction_end(conn(), tx(), boolean()) -> ok | {error, term()}.
transaction_end(C, Tx, Commit) -> one(C, {transaction_end, Tx, Commit}).

%% @doc Runs Fun(Tx) in a transaction and commits it, retrying from the
%% start when another commit got in between. Fun returns `ok' or
%% `{ok, Value}' to commit, anything else to abort (and that is returned).
transaction(C, Fun) -> transaction(C, transaction_start(C), Fun).

%% @doc As transaction/2 with the first transaction already started:
%% Started is the result of a `transaction_start' op in a batch, so that
%% starting it costs no round trip of its own.
transaction(C, Started, Fun) -> run_transaction(C, Started, Fun, ?TX_RETRIES).

run_transaction(C, {ok, Tx}, Fun, N) ->
    case catch Fun(Tx) of
        Done when Done =:= ok; element(1, Done) =:= ok ->
            case transaction_end(C, Tx, true) of
                ok -> Done;
                {error, eagain} when N > 1 -> run_transaction(C, transaction_start(C), Fun, N - 1);
                E -> E
            end;
        Other ->
            _ = transaction_end(C, Tx, false),
            Other
    end;
run_transaction(_C, E, _Fun, _N) ->
    E.

%% @doc Binds this connection to domain Domid (`auto' lets the daemon
%% choose): tube's extension for local domains, see tubestored's README.
-spec introduce_self(conn(), pos_integer() | auto) -> {ok, pos_integer()} | {error, term()}.
introduce_self(C, Domid) ->
    Arg = case Domid of auto -> "auto"; _ -> integer_to_list(Domid) end,
    case req(C, ?XS_INTRODUCE, 0, [Arg, 0, "self", 0]) of
        {ok, Bin} -> {ok, binary_to_integer(hd(fields(Bin)))};
        E -> E
    end.

is_domain_introduced(C, Domid) -> one(C, {is_domain_introduced, Domid}).

%% @doc Releases domain Domid as Xen does when a domain dies (dom0 only):
%% its nodes go, `@releaseDomain' fires, and its connection is closed.
release(C, Domid) ->
    ok(req(C, ?XS_RELEASE, 0, [integer_to_list(Domid), 0])).

get_domain_path(C, Domid) ->
    case req(C, ?XS_GET_DOMAIN_PATH, 0, [integer_to_list(Domid), 0]) of
        {ok, Bin} -> {ok, hd(fields(Bin))};
        E -> E
    end.

%% @doc Several requests in one round trip: they are sent together and the
%% daemon handles them in order. Each op is `{read, Tx, Path}', `{write,
%% Tx, Path, Value}', `{mkdir, Tx, Path}', `{rm, Tx, Path}', `{directory,
%% Tx, Path}', `{get_perms, Tx, Path}', `{set_perms, Tx, Path, Perms}',
%% `{watch, Path, Token}', `{unwatch, Path, Token}', `transaction_start',
%% `{transaction_end, Tx, Commit}' or `{is_domain_introduced, Domid}'; the
%% results come back in the same order and shape as from the single calls.
%% At most 256 ops.
-spec batch(conn(), [tuple() | transaction_start]) -> [ok | {ok, term()} | {error, term()}].
batch(C, Ops) ->
    Replies = call(C, [encode_op(Op) || Op <- Ops]),
    [decode_reply(op_name(Op), R) || {Op, R} <- lists:zip(Ops, Replies)].

%% @doc Sends a batch of named ops `[{Name, Op}]' without waiting: the
%% replies arrive at the calling process as `{tube_xs_reply, Ref, Replies}',
%% to be read with results/2. `{error, closed}' replies come at once when
%% the connection is gone.
-spec send(conn(), [{term(), tuple() | transaction_start}]) -> reference().
send(C, Named) ->
    Ref = make_ref(),
    ok = tube_nif:xs_send(C, [encode_op(Op) || {_, Op} <- Named], Ref),
    Ref.

%% @doc The replies to a batch sent by send/2, as a map Name => Result.
-spec results([{term(), tuple() | transaction_start}], [term()]) -> #{term() => term()}.
results(Named, Replies) ->
    maps:from_list([{Name, decode_reply(op_name(Op), R)}
                    || {{Name, Op}, R} <- lists:zip(Named, Replies)]).

%% @doc A named batch waited for at most Timeout milliseconds: a map of
%% results, or `{error, timeout}'. A late reply is dropped by the caller's
%% next named/3 or left as a stray message; batches holding a transaction
%% must go through send/2 so that their owner can end it.
-spec named(conn(), [{term(), tuple()}], timeout()) -> #{term() => term()} | {error, timeout}.
named(C, Named, Timeout) ->
    Ref = send(C, Named),
    receive
        {tube_xs_reply, Ref, Replies} -> results(Named, Replies)
    after Timeout ->
        {error, timeout}
    end.

one(C, Op) ->
    [Reply] = batch(C, [Op]),
    Reply.

op_name(Op) when is_atom(Op) -> Op;
op_name(Op) -> element(1, Op).

encode_op({read, Tx, P}) -> {?XS_READ, Tx, iolist_to_binary([P, 0])};
encode_op({write, Tx, P, V}) -> {?XS_WRITE, Tx, iolist_to_binary([P, 0, V])};
encode_op({mkdir, Tx, P}) -> {?XS_MKDIR, Tx, iolist_to_binary([P, 0])};
encode_op({rm, Tx, P}) -> {?XS_RM, Tx, iolist_to_binary([P, 0])};
encode_op({directory, Tx, P}) -> {?XS_DIRECTORY, Tx, iolist_to_binary([P, 0])};
encode_op({get_perms, Tx, P}) -> {?XS_GET_PERMS, Tx, iolist_to_binary([P, 0])};
encode_op({set_perms, Tx, P, Perms}) -> {?XS_SET_PERMS, Tx, iolist_to_binary([P, 0, format_perms(Perms)])};
encode_op({watch, P, Token}) -> {?XS_WATCH, 0, iolist_to_binary([P, 0, Token, 0])};
encode_op({unwatch, P, Token}) -> {?XS_UNWATCH, 0, iolist_to_binary([P, 0, Token, 0])};
encode_op(transaction_start) -> {?XS_TRANSACTION_START, 0, <<0>>};
encode_op({transaction_end, Tx, true}) -> {?XS_TRANSACTION_END, Tx, <<"T", 0>>};
encode_op({transaction_end, Tx, false}) -> {?XS_TRANSACTION_END, Tx, <<"F", 0>>};
encode_op({is_domain_introduced, D}) -> {?XS_IS_DOMAIN_INTRODUCED, 0, iolist_to_binary([integer_to_list(D), 0])}.

decode_reply(read, R) -> R;
decode_reply(directory, {ok, Bin}) -> {ok, fields(Bin)};
decode_reply(get_perms, {ok, Bin}) -> parse_perms(Bin);
decode_reply(transaction_start, {ok, Bin}) -> {ok, binary_to_integer(hd(fields(Bin)))};
decode_reply(is_domain_introduced, {ok, <<"T", _/binary>>}) -> {ok, true};
decode_reply(is_domain_introduced, {ok, <<"F", _/binary>>}) -> {ok, false};
decode_reply(is_domain_introduced, {ok, Other}) -> {error, {protocol, Other}};
decode_reply(_, R) -> ok(R).

%% ---- encoding ----------------------------------------------------------

format_perms(Perms) ->
    [[access_char(A), integer_to_list(D), 0] || {A, D} <- Perms].

parse_perms(Bin) ->
    try
        {ok, [{access(C), binary_to_integer(D)} || <<C, D/binary>> <- fields(Bin)]}
    catch
        error:_ -> {error, {protocol, Bin}}
    end.

access_char(none) -> $n;
access_char(read) -> $r;
access_char(write) -> $w;
access_char(both) -> $b.

access($n) -> none;
access($r) -> read;
access($w) -> write;
access($b) -> both.

%% NUL-separated fields; a trailing NUL ends the last one.
fields(Bin) ->
    [F || F <- binary:split(Bin, <<0>>, [global]), F =/= <<>>].

req(C, Type, Tx, Payload) ->
    [Reply] = call(C, [{Type, Tx, iolist_to_binary(Payload)}]),
    Reply.

%% Sends the requests and waits for their replies, which the native client
%% sends to this process; no scheduler is blocked meanwhile. A daemon that
%% does not answer in time gives {error, timeout} (a late reply is then a
%% stray message, which callers ignore).
call(_C, []) ->
    [];
call(C, Reqs) ->
    Ref = make_ref(),
    ok = tube_nif:xs_send(C, Reqs, Ref),
    receive
        {tube_xs_reply, Ref, Replies} -> Replies
    after ?REPLY_TIMEOUT ->
        [{error, timeout} || _ <- Reqs]
    end.

ok({ok, _}) -> ok;
ok(E) -> E.
