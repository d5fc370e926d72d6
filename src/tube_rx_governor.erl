%% @private
%% The receive governor: keeps the mailbox of every owner of a tube in the
%% default, bounded mode shallow.
%%
%% The driver cannot see the owner's mailbox; this process can. A bounded
%% tube delivers in windows; when half a window is gone the driver sends
%% `{tube_rx_low, Port, Owner}' here (one message per window, never
%% per packet), and this process reads the tube's delivered count, then the
%% owner's `message_queue_len', and hands both back to the tube in a
%% port_control (?TUBE_CTL_RX_GRANT, a look). The driver decides (see
%% native/tube_nif/src/rx_bound.rs): a new window that fills the mailbox up
%% to the tube's depth (about ?TUBE_RX_QUEUE_BYTES of packets, at most
%% ?TUBE_RX_MAX_QUEUE, and up to ?TUBE_RX_DEPTH_SCALE times that where looks
%% come late), or a hold, with the microseconds after
%% which its owner, at the rate it was seen to drain its mailbox, should
%% have brought it down to half the depth. This process looks at a held
%% tube again after that long, on the native clock (tube_nif:rx_clock/2),
%% whose grain is microseconds where Erlang timers' is a millisecond: a
%% fast owner drains a shallow mailbox in less.
%%
%% The bound is the driver's: it stops by itself at the end of a window,
%% and a window only ever fills the mailbox up to the depth counted from a
%% look whose count was read before its mailbox length, so however late
%% this process runs, a bounded tube's packets in a mailbox never exceed
%% the depth. A late look only pauses delivery. Started (or restarted)
%% with no state, it looks at every bounded tube on the node, so none
%% stays held by a governor that has gone.
-module(tube_rx_governor).
-behaviour(gen_server).

-include("tube_proto.hrl").

-export([start_link/0, govern/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(DRIVER, "tube_nif").

%% held: the tubes held, each with its owner and when its next look is due
%% (monotonic microseconds); armed: the deadline the clock is set for, if
%% any.
-record(state, {held = #{} :: #{port() => {pid(), integer()}},
                armed = none :: none | integer()}).

start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc A tube has entered the bounded mode (opened with no `active'
%% option, or set to `{active, bounded}'): it delivers nothing until it
%% is looked at. With no governor running (the application is stopping)
%% the tube delivers nothing more, as a passive tube.
-spec govern(port()) -> ok.
govern(Port) ->
    gen_server:cast(?MODULE, {govern, Port}).

init([]) ->
    %% Grants are what a keeping-up receiver waits on: they must not queue
    %% behind ordinary work on a loaded node.
    process_flag(priority, high),
    self() ! rescan,
    {ok, #state{}}.

handle_call(_Request, _From, State) ->
    {reply, {error, unknown_call}, State}.

handle_cast({govern, Port}, State) ->
    {noreply, arm(first_look(Port, State))};
handle_cast(_Msg, State) ->
    {noreply, State}.

handle_info({tube_rx_low, Port, Owner}, State) ->
    {noreply, arm(look(Port, Owner, State))};
handle_info(tube_rx_clock, State) ->
    {noreply, arm(looks_due(State#state{armed = none}))};
handle_info(rescan, State) ->
    Ports = [P || P <- erlang:ports(), is_tube_port(P)],
    {noreply, arm(lists:foldl(fun first_look/2, State, Ports))};
handle_info(_Msg, State) ->
    {noreply, State}.

%% A tube that asked for nothing yet.
first_look(Port, State) ->
    case erlang:port_info(Port, connected) of
        {connected, Owner} -> look(Port, Owner, State);
        undefined -> forget(Port, State)
    end.

%% The held tubes whose look is due.
looks_due(#state{held = Held} = State) ->
    Now = now_us(),
    maps:fold(fun(Port, {Owner, Due}, S) when Due =< Now -> look(Port, Owner, S);
                 (_Port, _, S) -> S
              end, State, Held).

%% The owner's mailbox, handed to the tube with the count read just before
%% it (the packets delivered after the count are counted as queued, and
%% the fewer of those the closer the look): granted, held until a later
%% look, or (closed, owner gone, another mode) forgotten.
look(Port, Owner, State) ->
    case {delivered(Port), erlang:process_info(Owner, message_queue_len)} of
        {closed, _} ->
            forget(Port, State);
        {Count, {message_queue_len, Len}} ->
            case catch erlang:port_control(Port, ?TUBE_CTL_RX_GRANT, <<Count:64/native, Len:64/native>>) of
                [_ | _] = Answer when length(Answer) =:= 8 ->
                    <<Wait:64/native>> = list_to_binary(Answer),
                    verdict(Port, Owner, Wait, State);
                _ ->
                    forget(Port, State)
            end;
        {_, undefined} ->
            forget(Port, State)
    end.

verdict(Port, _Owner, 0, State) ->
    forget(Port, State);
verdict(Port, Owner, Wait, #state{held = Held} = State) ->
    State#state{held = Held#{Port => {Owner, now_us() + Wait}}}.

forget(Port, #state{held = Held} = State) ->
    State#state{held = maps:remove(Port, Held)}.

%% Sets the clock for the earliest look due, unless it is set for that or
%% sooner already.
arm(#state{held = Held} = State) when map_size(Held) =:= 0 ->
    State;
arm(#state{held = Held, armed = Armed} = State) ->
    Next = maps:fold(fun(_, {_, Due}, Min) -> min(Due, Min) end, infinity, Held),
    case Armed of
        At when is_integer(At), At =< Next ->
            State;
        _ ->
            ok = tube_nif:rx_clock(self(), max(0, Next - now_us())),
            State#state{armed = Next}
    end.

now_us() ->
    erlang:monotonic_time(microsecond).

%% Packets the tube has delivered, or `closed'.
delivered(Port) ->
    case catch erlang:port_control(Port, ?TUBE_CTL_RX_GRANT, []) of
        [_ | _] = Bytes when length(Bytes) =:= 8 ->
            <<Count:64/native>> = list_to_binary(Bytes),
            Count;
        _ ->
            closed
    end.

is_tube_port(Port) ->
    case erlang:port_info(Port, name) of
        {name, ?DRIVER ++ _} -> is_bounded(Port);
        _ -> false
    end.

is_bounded(Port) ->
    case catch erlang:port_control(Port, ?TUBE_CTL_ACTIVE, <<?TUBE_ACTIVE_QUERY>>) of
        [?TUBE_ACTIVE_BOUNDED | _] -> true;
        _ -> false
    end.
