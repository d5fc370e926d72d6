%% @private
%% One connection to Xenstore, in its own process so that nothing it waits
%% for (starting the daemon, registering the domain, a daemon that stopped
%% answering) holds up tube_registry.
%%
%% The process connects, binds the connection to this node's domain (the
%% domid it had before, else the configured one, never one a live node
%% holds: tube_lease), creates the domain's directories and watches, then
%% tells the registry `{link_up, Link, Conn, Domid}'. From then on it
%% routes the watch events, which the native client sends to the process
%% that connected, with duplicates removed (a node that was paused while
%% events piled up gets one event per path): a change to a tube's peer
%% goes straight to the tube process holding that key (its row in the
%% registry's table), the rest (new entries under data/tip, domains
%% registered or released) to the registry in batches.
%% When the connection ends it sends `{link_down, Link, Reason}' and exits.
-module(tube_link).

-export([start_link/2, stop/1, resetup/1, publish_name/3]).

-include_lib("kernel/include/logger.hrl").

-define(SETUP_TIMEOUT, 10000).
-define(MAX_BATCH, 4096).

-spec start_link(pid(), pos_integer() | undefined) -> pid().
start_link(Registry, Domid) ->
    proc_lib:spawn_link(fun() -> init(Registry, Domid) end).

stop(Link) -> Link ! stop, ok.

%% Checks the domain's directories again (data/tip is writable by every
%% domain, so one may remove it) and makes them again if they are gone.
resetup(Link) -> Link ! resetup, ok.

publish_name(Link, Name, Dist) -> Link ! {publish_name, Name, Dist}, ok.

init(Reg, Domid) ->
    Tag = erlang:unique_integer([positive]),
    case connect(Tag, Domid) of
        {ok, Conn, D} ->
            Reg ! {link_up, self(), Conn, D},
            relay(#{reg => Reg, conn => Conn, tag => Tag, domid => D, pending => #{}});
        {error, Reason} ->
            Reg ! {link_down, self(), Reason}
    end.

connect(Tag, Domid) ->
    case tube_daemon:connect(Tag) of
        {ok, Conn} ->
            case register_domain(Conn, Domid) of
                {ok, D} ->
                    case setup(Conn, D) of
                        ok -> {ok, Conn, D};
                        E -> tube_xs:close(Conn), E
                    end;
                E ->
                    tube_xs:close(Conn),
                    E
            end;
        E ->
            E
    end.

%% The domid is kept across reconnections; the first time it comes from the
%% application env `domid' (an integer, or `auto').
register_domain(Conn, undefined) ->
    Want = application:get_env(tube, domid, auto),
    case Want =:= auto orelse (is_integer(Want) andalso Want >= 1 andalso Want < 16#7FF0) of
        true -> introduce(Conn, Want, tube_lease:candidates(Want));
        false -> {error, {bad_config, {domid, Want}}}
    end;
register_domain(Conn, Domid) ->
    introduce(Conn, Domid, [Domid]).

introduce(_Conn, Want, []) ->
    {error, {domid_in_use, Want}};
introduce(Conn, Want, Next) when is_function(Next) ->
    introduce(Conn, Want, Next());
introduce(Conn, Want, [D | More]) ->
    case tube_xs:introduce_self(Conn, D) of
        {ok, D} ->
            lease(D),
            {ok, D};
        {error, eexist} when Want =:= auto ->
            introduce(Conn, Want, More);
        {error, eexist} ->
            {error, {domid_in_use, D}};
        {error, R} when is_integer(Want), (R =:= einval orelse R =:= enosys orelse R =:= eacces) ->
            %% A Xenstore without tube's local-domain extension (Xen's own
            %% xenstored): use the configured domid on this connection as
            %% it is, with the rights the daemon gives it.
            ?LOG_NOTICE("tube: Xenstore has no local domains (~p); using domid ~p as configured", [R, Want]),
            {ok, Want};
        {error, R} ->
            {error, {introduce, R}}
    end.

lease(D) ->
    case tube_lease:take(D) of
        ok -> ok;
        {error, R} -> ?LOG_WARNING("tube: cannot record domid ~p as this node's: ~p", [D, R])
    end.

setup(Conn, D) ->
    Batch = tube_paths:setup_domain(D),
    case tube_xs:named(Conn, Batch, ?SETUP_TIMEOUT) of
        {error, _} = E -> E;
        Res -> tube_paths:first_error([N || {N, _} <- Batch], Res)
    end.

relay(S = #{tag := Tag, reg := Reg}) ->
    receive
        {tube_xs, Tag, {watch, _, _} = W} ->
            case [E || E <- drain(Tag, S, [W], #{W => true}, 1), not to_tube(E)] of
                [] -> ok;
                Rest -> Reg ! {xs_events, self(), Rest}
            end,
            relay(S);
        {tube_xs, Tag, closed} ->
            Reg ! {link_down, self(), closed};
        {tube_xs_reply, Ref, Replies} ->
            relay(replied(Ref, Replies, S));
        resetup ->
            relay(ask(resetup, [{tip_dir, {read, 0, tube_paths:tip_dir(maps:get(domid, S))}}], S));
        {publish_name, Name, Dist} ->
            relay(ask(name, tube_paths:publish_name(maps:get(domid, S), Name, Dist), S));
        stop ->
            tube_xs:close(maps:get(conn, S))
    end.

%% Tells the tube a token names of a change to its peer's node; true if
%% the event was a tube's (held by a process or not).
to_tube({watch, _, Token}) ->
    case tube_paths:key_of_token(Token) of
        {ok, Key} ->
            case tube_registry:holder(Key) of
                {ok, Pid} -> Pid ! {tube_event, peer_changed};
                error -> ok
            end,
            true;
        error ->
            false
    end.

%% The events queued behind the first, without duplicates, in order.
drain(Tag, S, Acc, Seen, N) when N < ?MAX_BATCH ->
    receive
        {tube_xs, Tag, {watch, _, _} = W} ->
            case Seen of
                #{W := _} -> drain(Tag, S, Acc, Seen, N + 1);
                _ -> drain(Tag, S, [W | Acc], Seen#{W => true}, N + 1)
            end
    after 0 ->
        lists:reverse(Acc)
    end;
drain(_Tag, _S, Acc, _Seen, _N) ->
    lists:reverse(Acc).

ask(What, Batch, S = #{conn := C, pending := P}) ->
    Ref = tube_xs:send(C, Batch),
    S#{pending := P#{Ref => {What, Batch}}}.

replied(Ref, Replies, S = #{pending := P}) ->
    case maps:take(Ref, P) of
        {{What, Batch}, P1} -> done(What, tube_xs:results(Batch, Replies), S#{pending := P1});
        error -> S
    end.

done(resetup, #{tip_dir := {error, enoent}}, S = #{domid := D}) ->
    ?LOG_WARNING("tube: data/tip of domain ~p was removed; making it again", [D]),
    ask(setup, tube_paths:setup_domain(D), S);
done(resetup, _, S) ->
    S;
done(What, Res, S) ->
    case maps:filter(fun(_, R) -> R =/= ok andalso element(1, R) =/= ok end,
                     maps:remove(parent_perms, Res)) of
        Empty when map_size(Empty) =:= 0 -> ok;
        Bad -> ?LOG_ERROR("tube: Xenstore refused ~p of domain ~p: ~p", [What, maps:get(domid, S), Bad])
    end,
    S.
