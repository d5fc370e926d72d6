%% @private
%% The receive governor: keeps the mailbox of every owner of a tube in the
%% default, bounded mode from growing without bound.
%%
%% The driver cannot see the owner's mailbox; this process can. A bounded
%% tube delivers in windows of ?TUBE_RX_WINDOW packets. When half a window
%% is gone the driver sends `{tube_rx_low, Port}' here (one message per half
%% window, never per packet), and this process looks at the owner's
%% `message_queue_len': below ?TUBE_RX_HIGH_WATER it grants the next window
%% (port_control ?TUBE_CTL_RX_GRANT); otherwise it holds the tube, and the
%% window runs out: the tube stops reading its ring, the ring fills and the
%% peer's sends drop there, counted. A held tube is looked at again every
%% ?TUBE_RX_POLL_MS milliseconds and granted once its owner's mailbox is
%% below ?TUBE_RX_LOW_WATER (the gap between the two marks keeps a tube at
%% the edge from flapping between held and granted). Both marks are also
%% capped in bytes of the tube's average packet (?TUBE_RX_HIGH_BYTES for
%% the high mark, half for the low one): a mailbox of tens of MB is slow to
%% work through.
%%
%% The bound is the driver's: a window is only granted after a look, and
%% it is a window less what the tube delivered after the count read just
%% before the look, so however late this process runs, a bounded tube's
%% packets in a mailbox never exceed ?TUBE_RX_HIGH_WATER + ?TUBE_RX_WINDOW
%% (and, for large packets, about ?TUBE_RX_HIGH_BYTES of them plus a window).
%% A late look only pauses delivery. Started (or restarted) with no state, it looks at
%% every bounded tube on the node, so none stays held by a governor that
%% has gone.
-module(tube_rx_governor).
-behaviour(gen_server).

-include("tube_proto.hrl").

-export([start_link/0, govern/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(DRIVER, "tube_nif").

%% held: the tubes held, each with its owner; poll: whether a look at
%% them is due.
-record(state, {held = #{} :: #{port() => pid()}, poll = false :: boolean()}).

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
    {noreply, look(Port, high, State)};
handle_cast(_Msg, State) ->
    {noreply, State}.

handle_info({tube_rx_low, Port}, State) ->
    {noreply, look(Port, high, State)};
handle_info(poll, #state{held = Held} = State) ->
    State1 = maps:fold(fun(Port, _Owner, S) -> look(Port, low, S) end,
                       State#state{poll = false}, Held),
    {noreply, State1};
handle_info(rescan, State) ->
    Ports = [P || P <- erlang:ports(), is_tube_port(P)],
    {noreply, lists:foldl(fun(P, S) -> look(P, high, S) end, State, Ports)};
handle_info(_Msg, State) ->
    {noreply, State}.

%% Grants the tube a window if its owner's mailbox is below the mark
%% (`high' or `low'), holds it otherwise; a closed tube, or one whose owner
%% is gone, is forgotten.
look(Port, Which, #state{held = Held} = State) ->
    Count = delivered(Port),
    Mark = mark(Port, Which),
    case queue_len(Port) of
        {_Owner, Len} when Len < Mark, is_integer(Count) ->
            grant(Port, Count),
            State#state{held = maps:remove(Port, Held)};
        {Owner, _} ->
            poll_later(State#state{held = Held#{Port => Owner}});
        gone ->
            State#state{held = maps:remove(Port, Held)}
    end.

%% A mark in packets for this tube: large packets fill a cache sooner, so
%% a mark is also at most ?TUBE_RX_HIGH_BYTES (or half of it for the low
%% mark) of the tube's average packet, and never less than half a window.
mark(Port, high) -> mark(Port, ?TUBE_RX_HIGH_WATER, ?TUBE_RX_HIGH_BYTES);
mark(Port, low) -> mark(Port, ?TUBE_RX_LOW_WATER, ?TUBE_RX_HIGH_BYTES div 2).

mark(Port, Packets, Bytes) ->
    case catch erlang:port_control(Port, ?TUBE_CTL_STATS, []) of
        [_ | _] = Stats when length(Stats) >= 32 ->
            <<_Sent:64/native, _SentBytes:64/native, Rx:64/native, RxBytes:64/native, _/binary>> =
                list_to_binary(Stats),
            case Rx of
                0 -> Packets;
                _ -> max(?TUBE_RX_WINDOW div 2, min(Packets, Bytes * Rx div max(RxBytes, 1)))
            end;
        _ ->
            Packets
    end.

%% The tube's owner and the length of its mailbox, or `gone'.
queue_len(Port) ->
    case erlang:port_info(Port, connected) of
        {connected, Owner} ->
            case erlang:process_info(Owner, message_queue_len) of
                {message_queue_len, Len} -> {Owner, Len};
                undefined -> gone
            end;
        undefined ->
            gone
    end.

%% Packets the tube has delivered, read before the look at the mailbox:
%% the grant that follows subtracts what was delivered after it, which the
%% look may not have seen.
delivered(Port) ->
    case catch erlang:port_control(Port, ?TUBE_CTL_RX_GRANT, []) of
        [_ | _] = Bytes when length(Bytes) =:= 8 ->
            <<Count:64/native>> = list_to_binary(Bytes),
            Count;
        _ ->
            closed
    end.

%% A tube in another mode ignores the grant; a closed one raises badarg.
grant(Port, Count) ->
    _ = (catch erlang:port_control(Port, ?TUBE_CTL_RX_GRANT, <<Count:64/native>>)),
    ok.

poll_later(#state{poll = true} = State) ->
    State;
poll_later(State) ->
    erlang:send_after(?TUBE_RX_POLL_MS, self(), poll),
    State#state{poll = true}.

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
