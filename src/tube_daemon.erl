%% @private
%% Finding Xenstore, and starting the embedded daemon when there is none.
%%
%% The socket is `XENSTORED_PATH' when set, else the per-user default of
%% tubestored. When nothing answers there and the application env
%% `embedded_daemon' is true (the default), `tubestored --daemon' is run:
%% it detaches into its own session, so it outlives this node, and returns
%% once it listens. Two nodes racing to start it are serialised by the
%% daemon's own lock; the loser finds the winner running. The daemon's pid
%% is written next to the socket, as `<socket>.pid'.
-module(tube_daemon).

-export([socket_path/0, connect/1]).

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

start(Path) ->
    Exe = filename:join(tube_nif:lib_dir(), "tubestored"),
    Sock = binary_to_list(Path),
    Args = ["--daemon", "--quiet", "--socket", Sock, "--pidfile", Sock ++ ".pid"] ++ db_args(),
    Port = open_port({spawn_executable, Exe},
                     [{args, Args}, exit_status, stderr_to_stdout, binary]),
    wait_start(Port, <<>>).

db_args() ->
    case application:get_env(tube, xenstore_db) of
        {ok, Db} when Db =/= undefined -> ["--db", Db];
        _ -> []
    end.

wait_start(Port, Out) ->
    receive
        {Port, {data, D}} -> wait_start(Port, <<Out/binary, D/binary>>);
        {Port, {exit_status, 0}} -> ok;
        {Port, {exit_status, S}} -> {error, {tubestored_failed, S, Out}}
    after ?START_TIMEOUT ->
        catch port_close(Port),
        {error, {tubestored_timeout, Out}}
    end.
