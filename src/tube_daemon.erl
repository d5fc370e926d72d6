%% @private
%% Finding Xenstore, and starting the embedded daemon when there is none.
%%
%% The socket is `XENSTORED_PATH' when set, else the per-user default of
%% tubestored. When nothing answers there and the application env
%% `embedded_daemon' is true (the default), `tubestored --daemon' is run:
%% it detaches into its own session, so it outlives this node, and returns
%% once it listens. Two nodes racing to start it are serialised by the
%% daemon's own lock; the loser finds the winner running. The daemon's pid
%% is written next to the socket, as `<socket>.pid'. When it cannot be
%% started, the error names the path at fault and the cause (see start/1),
%% and is logged.
-module(tube_daemon).

-export([socket_path/0, connect/1]).

-include_lib("kernel/include/file.hrl").

-define(START_TIMEOUT, 10000).

%% @doc The socket path this node uses. `XENSTORED_PATH' is read here, not
%% in native code: os:putenv/2 changes the emulator's copy of the
%% environment, which native code does not see.
-spec socket_path() -> binary().
socket_path() ->
    case application:get_env(tube, xenstore_path) of
        {ok, P} when P =/= default ->
            unicode:characters_to_binary(P);
        _ ->
            case os:getenv("XENSTORED_PATH") of
                Env when Env =:= false; Env =:= "" -> tube_xs:default_path();
                Env -> unicode:characters_to_binary(Env)
            end
    end.

%% @doc Connects to Xenstore, starting the embedded daemon if needed.
-spec connect(non_neg_integer()) -> {ok, tube_xs:conn()} | {error, term()}.
connect(Tag) ->
    Path = socket_path(),
    case tube_xs:open(Path, Tag) of
        {ok, C} ->
            {ok, C};
        {error, First} ->
            case application:get_env(tube, embedded_daemon, true) of
                true ->
                    case start(Path) of
                        ok -> tube_xs:open(Path, Tag);
                        E -> E
                    end;
                false ->
                    {error, {no_xenstore, Path, First}}
            end
    end.

%% Starts the daemon for socket Path. A failure names what failed and why:
%% `{daemon_binary, Exe, Posix}' (tubestored missing or not executable),
%% `{socket_dir, Dir, Posix}' (the socket's directory cannot be created or
%% written), `{tubestored_failed, Path, Status, Output}' (the daemon
%% exited with an error) or `{tubestored_timeout, Path, Output}'.
start(Path) ->
    Exe = absname(filename:join(tube_nif:lib_dir(), "tubestored")),
    Sock = unicode:characters_to_list(Path),
    Result = case {check_exe(Exe), check_socket_dir(filename:dirname(Sock))} of
                 {ok, ok} -> run(Exe, Sock);
                 {ok, E} -> E;
                 {E, _} -> E
             end,
    case Result of
        ok -> ok;
        {error, Reason} -> logger:error("tube: cannot start the Xenstore daemon: ~ts", [describe(Reason)])
    end,
    Result.

%% Files go through prim_file and raw files, not the file server, which a
%% control plane started at boot for the distribution carrier runs before.
absname(Name) ->
    case filename:pathtype(Name) of
        absolute -> Name;
        _ -> {ok, Cwd} = prim_file:get_cwd(), filename:join(Cwd, Name)
    end.

run(Exe, Sock) ->
    Args = ["--daemon", "--quiet", "--socket", Sock, "--pidfile", Sock ++ ".pid"] ++ db_args(),
    try open_port({spawn_executable, Exe}, [{args, Args}, exit_status, stderr_to_stdout, binary]) of
        Port -> wait_start(Port, Sock, <<>>)
    catch
        error:Posix when is_atom(Posix) -> {error, {daemon_binary, Exe, Posix}}
    end.

check_exe(Exe) ->
    case prim_file:read_file_info(Exe) of
        {ok, #file_info{type = regular, mode = Mode}} when Mode band 8#111 =/= 0 -> ok;
        {ok, #file_info{type = regular}} -> {error, {daemon_binary, Exe, eacces}};
        {ok, #file_info{}} -> {error, {daemon_binary, Exe, eisdir}};
        {error, Posix} -> {error, {daemon_binary, Exe, Posix}}
    end.

%% The daemon creates the socket's directory (and missing parents) itself:
%% the nearest one that exists must be a directory it can write in. Tried
%% by creating a file there, since permission bits alone do not say (root,
%% read-only mounts).
check_socket_dir(Dir) ->
    case prim_file:read_file_info(Dir) of
        {ok, #file_info{type = directory}} ->
            probe(Dir);
        {ok, #file_info{}} ->
            {error, {socket_dir, Dir, enotdir}};
        {error, enoent} ->
            case filename:dirname(Dir) of
                Dir -> {error, {socket_dir, Dir, enoent}};
                Parent -> parent_result(Dir, check_socket_dir(Parent))
            end;
        {error, Posix} ->
            {error, {socket_dir, Dir, Posix}}
    end.

%% A parent that cannot hold the directory: name the one the daemon needs.
parent_result(_Dir, ok) -> ok;
parent_result(Dir, {error, {socket_dir, _Parent, Posix}}) -> {error, {socket_dir, Dir, Posix}}.

probe(Dir) ->
    Probe = filename:join(Dir, ".tube-probe-" ++ os:getpid()),
    case file:open(Probe, [raw, write, exclusive]) of
        {ok, F} ->
            ok = file:close(F),
            _ = prim_file:delete(Probe),
            ok;
        {error, eexist} ->
            _ = prim_file:delete(Probe),
            ok;
        {error, Posix} ->
            {error, {socket_dir, Dir, Posix}}
    end.

describe({daemon_binary, Exe, Posix}) ->
    io_lib:format("~ts: ~ts", [Exe, file:format_error(Posix)]);
describe({socket_dir, Dir, Posix}) ->
    io_lib:format("socket directory ~ts: ~ts", [Dir, file:format_error(Posix)]);
describe({tubestored_failed, Sock, Status, Out}) ->
    io_lib:format("tubestored --socket ~ts exited with status ~b: ~ts", [Sock, Status, Out]);
describe({tubestored_timeout, Sock, Out}) ->
    io_lib:format("tubestored --socket ~ts did not start within ~b ms: ~ts", [Sock, ?START_TIMEOUT, Out]).

db_args() ->
    case application:get_env(tube, xenstore_db) of
        {ok, Db} when Db =/= undefined -> ["--db", Db];
        _ -> []
    end.

wait_start(Port, Sock, Out) ->
    receive
        {Port, {data, D}} -> wait_start(Port, Sock, <<Out/binary, D/binary>>);
        {Port, {exit_status, 0}} -> ok;
        {Port, {exit_status, S}} -> {error, {tubestored_failed, Sock, S, Out}}
    after ?START_TIMEOUT ->
        catch port_close(Port),
        {error, {tubestored_timeout, Sock, Out}}
    end.
