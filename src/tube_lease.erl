%% @private
%% Which live node holds which domid, kept beside the daemon's socket so
%% that it outlives the daemon.
%%
%% A daemon restarted without a database knows no domain: without this, a
%% node starting in the gap would be given the domid of a live node that is
%% about to reconnect, and take its tubes. Each node writes
%% `<socket>.domains/<domid>' with its OS pid and that process's start time
%% (from /proc), which together name one process for good: a lease whose
%% process is gone is free, and a node asking for a domid (or `auto')
%% skips the domids held by other live processes. The daemon still decides
%% between two live nodes racing for a free domid (EEXIST).
%% Files are read and written through prim_file, not the file server:
%% a control plane started at boot for the distribution carrier runs before
%% the kernel starts the file server.
-module(tube_lease).

-export([free/1, candidates/1, take/1, drop/1, holder/1, held/0]).

-include("tube_proto.hrl").
-define(MAX_DOMID, ?TUBE_MAX_DOMID).

%% Whether domid D is not held by another live process.
-spec free(pos_integer()) -> boolean().
free(D) ->
    case holder(D) of
        none -> true;
        {Pid, Start} -> {Pid, Start} =:= self_id() orelse not alive(Pid, Start)
    end.

%% Domids to try for a configured value: the value itself (if free), or for
%% `auto' the free ones, lowest first (a lazy list, as a fun).
-spec candidates(auto | pos_integer()) -> [pos_integer()] | fun(() -> term()).
candidates(auto) -> next_free(1);
candidates(D) -> [D || free(D)].

next_free(D) when D > ?MAX_DOMID -> [];
next_free(D) ->
    case free(D) of
        true -> [D | fun() -> next_free(D + 1) end];
        false -> next_free(D + 1)
    end.

%% Records that this process holds D. Errors are returned (and logged by
%% the caller): the node still runs, only without protection.
-spec take(pos_integer()) -> ok | {error, term()}.
take(D) ->
    {Pid, Start} = self_id(),
    File = file(D),
    Tmp = File ++ ".tmp." ++ Pid,
    case ensure_dir(filename:dirname(File)) of
        ok ->
            case prim_file:write_file(Tmp, [Pid, " ", Start, "\n"]) of
                ok -> prim_file:rename(Tmp, File);
                E -> E
            end;
        E ->
            E
    end.

ensure_dir(Dir) ->
    case prim_file:make_dir(Dir) of
        ok -> ok;
        {error, eexist} -> ok;
        E -> E
    end.

%% Gives D up, if this process holds it.
-spec drop(pos_integer()) -> ok.
drop(D) ->
    case holder(D) =:= self_id() of
        true -> _ = prim_file:delete(file(D)), ok;
        false -> ok
    end.

%% The domids leased by nodes of this host (live or not): where to look
%% for a node by name, as an unprivileged domain cannot list /local/domain.
-spec held() -> [pos_integer()].
held() ->
    case prim_file:list_dir(filename:dirname(file(1))) of
        {ok, Names} -> lists:sort([D || N <- Names, D <- [catch list_to_integer(N)], is_integer(D)]);
        {error, _} -> []
    end.

-spec holder(pos_integer()) -> none | {string(), string()}.
holder(D) ->
    case prim_file:read_file(file(D)) of
        {ok, Bin} ->
            case string:lexemes(binary_to_list(Bin), " \n") of
                [Pid, Start] -> {Pid, Start};
                _ -> none
            end;
        {error, _} ->
            none
    end.

file(D) ->
    binary_to_list(tube_daemon:socket_path()) ++ ".domains/" ++ integer_to_list(D).

self_id() ->
    Pid = os:getpid(),
    {Pid, start_time(Pid)}.

alive(Pid, Start) -> start_time(Pid) =:= Start.

%% Field 22 of /proc/<pid>/stat, after the parenthesised command name.
start_time(Pid) ->
    case prim_file:read_file("/proc/" ++ Pid ++ "/stat") of
        {ok, Stat} ->
            [_, After] = string:split(binary_to_list(Stat), ")", trailing),
            case string:lexemes(After, " ") of
                Fields when length(Fields) >= 20 -> lists:nth(20, Fields);
                _ -> "unknown"
            end;
        {error, _} ->
            "gone"
    end.
