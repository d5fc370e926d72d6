%% @doc Test networks: several BEAM OS processes on this machine, meshed
%% over Erlang distribution, with faults a test can inject (partitions,
%% pauses, kills, restarts, latency and loss on raw tubes, latency on
%% distribution links) and a log of what
%% the network saw that a test can match against an expected sequence.
%%
%% ```
%% {ok, Net} = tube_net:start(#{nodes => 3}),
%% ok = tube_net:partition(Net, [[n1], [n2, n3]]),
%% ok = tube_net:expect(Net, [{partition, '_'},
%%                            {unordered, [{nodedown, n1, n2}, {nodedown, n2, n1},
%%                                         {nodedown, n1, n3}, {nodedown, n3, n1}]}], 5000),
%% ok = tube_net:heal(Net),
%% ok = tube_net:stop(Net).
%% '''
%%
%% Nodes are named by labels `n1'..`nN' (the prefix is an option); node
%% `nI' is the Erlang node `nI@Host' (short names; see `unique_names') and has domid `I'
%% (shifted past this node's own domid when it is one of them, or as
%% given). Every call taking a node takes its label or its node name.
%%
%% The controller (the node calling start/1) needs no distribution: it
%% drives each node over the node's standard I/O (OTP's `peer'), which a
%% partition does not touch. Partitions are enforced inside the nodes by
%% the distribution carriers, which ask `tube_net_guard:permit/1' before
%% connecting to or accepting from a node: `tube_dist' between the nodes
%% and `tube_net_tcp_dist' (`inet_tcp_dist' with that check) for anything
%% else (`-proto_dist tube_net_tcp tube'), or TCP alone.
%%
%% == Events ==
%% The log holds `{Seq, Time, Event}' entries (see `tube_net_log'):
%% <ul>
%% <li>`{node_up, L}': node L booted (start/1, restart/2);
%% `{node_down, L, killed | stopped | exited}': its OS process ended;</li>
%% <li>`{nodeup, L, M}', `{nodedown, L, M}': node L's distribution saw M
%% connect, disconnect (M is a label, or a node name outside the net);
%% `{refused, L, M}': L's carrier refused to connect to M;</li>
%% <li>`{partition, Groups}', `heal', `{paused, L}', `{resumed, L}',
%% `{killed, L}' (kill -9 sent; `node_down' follows once it is gone),
%% `{slow, A, B, Ms}', `{loss, A, B, Ratio}', `{slow_dist, A, B, Ms}':
%% faults, logged when they are applied;</li>
%% <li>`{tube_up, L, M, Tid}', `{tube_down, L, M, Tid}': raw tubes opened
%% through `tube_net_link', seen from L's side;</li>
%% <li>`net_started', first.</li>
%% </ul>
-module(tube_net).
-behaviour(gen_server).
-compile({no_auto_import, [nodes/1]}).

-export([start/1, stop/1, nodes/1, labels/1, node/2, domid/2, os_pid/2,
         call/5, call/6, partition/2, heal/1, pause/2, resume/2, kill/2,
         restart/2, slow/4, loss/4, slow_dist/4, events/1, expect/3, expect/4, mark/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-export_type([net/0, node_ref/0, options/0, node_options/0]).

-type net() :: pid().
-type node_ref() :: atom().
-type node_options() :: #{carrier => tube | tcp,
                          args => [string()],
                          env => [{string(), string()}]}.
-type options() :: #{nodes := pos_integer(),
                     prefix => string(),
                     domids => [pos_integer()],
                     carrier => tube | tcp,
                     apps => [atom()],
                     code_paths => [file:filename()],
                     args => [string()],
                     env => [{string(), string()}],
                     node_opts => #{atom() => node_options()},
                     net_ticktime => pos_integer(),
                     boot_timeout => pos_integer(),
                     cookie => atom(),
                     unique_names => boolean(),
                     prevent_overlapping_partitions => boolean()}.

-define(CALL_TIMEOUT, 30000).
-define(MESH_TIMEOUT, 30000).

-record(node, {label :: atom(), node :: node(), domid :: pos_integer(), pid :: pid()}).

-record(st, {
    name :: atom(),
    order :: [atom()],
    nodes :: #{atom() => #node{}},
    groups = undefined :: undefined | [[atom()]],
    shapes = #{} :: #{{atom(), atom()} => #{latency := non_neg_integer(), loss := float(),
                                            dist := non_neg_integer()}},
    log :: tube_net_log:log(),
    t0 :: integer(),
    cursor = 0 :: non_neg_integer(),
    waiters = [] :: [{reference(), gen_server:from(), tube_net_log:expected()}]
}).

%%% API ----------------------------------------------------------------------

%% @doc Starts a network and returns once every node runs and every node
%% is connected to every other one (their `nodeup' events are in the log).
%% Options:
%% <ul>
%% <li>`nodes' (required): how many nodes, 1..64;</li>
%% <li>`prefix' (default "n"): labels and short node names are prefix ++ I;</li>
%% <li>`domids': the domids of the nodes, in order (default I, or I plus
%% this node's own domid when that is in 1..N);</li>
%% <li>`carrier': `tube' (the default: `-proto_dist tube_net_tcp tube',
%% tube distribution between the nodes, with TCP for any node the tube
%% carrier cannot reach) or `tcp' (`-proto_dist tube_net_tcp' alone); both
%% consult the guard;</li>
%% <li>`prevent_overlapping_partitions' (default `false'): the kernel
%% parameter of `global' in the nodes. OTP's default is `true', under which
%% `global' takes down connections to every node that reports losing one:
%% a partition cut from outside reaches the nodes one after the other, so
%% `global' would also cut connections inside the groups;</li>
%% <li>`apps' (default `[tube]'): applications started in every node, in
%% order;</li>
%% <li>`code_paths': directories added to the nodes' code path besides
%% this node's own (which they always get);</li>
%% <li>`args': more emulator arguments; `env': `{Name, Value}' strings
%% set in the nodes' OS environment (over this node's own, which they
%% inherit); `net_ticktime' (seconds); `cookie' (default a random one);
%% `boot_timeout' (ms, default 30000);</li>
%% <li>`unique_names' (default `false'): node `nI' is then the Erlang node
%% `nI_P' ++ `x' ++ `U@Host', P being this OS process's pid and U a number
%% of this network, so that test runs sharing the machine (and its epmd)
%% never meet; labels, domids and events stay as they are;</li>
%% <li>`node_opts': a map from labels to options of that node alone:
%% `carrier' (replaces the network's: a `tcp' node in a `tube' network
%% makes a mixed cluster, the tube nodes reaching it over TCP), `args'
%% (after the network's) and `env' (over the network's). They hold for
%% the node's restarts too.</li>
%% </ul>
%% `{error, Reason}' when a node cannot start (nothing is left running).
-spec start(options()) -> {ok, net()} | {error, term()}.
start(Opts) when is_map(Opts) ->
    case check_opts(Opts) of
        ok ->
            case gen_server:start(?MODULE, Opts, []) of
                {ok, Pid} -> {ok, Pid};
                {error, _} = E -> E
            end;
        E ->
            E
    end;
start(_) ->
    erlang:error(badarg).

%% @doc Stops every node (a paused one with kill -9) and waits until their
%% OS processes are gone; the nodes' Xenstore domains go with their
%% connections. `ok' for a network already stopped too.
-spec stop(net()) -> ok.
stop(Net) ->
    try gen_server:call(Net, stop, infinity)
    catch exit:{noproc, _} -> ok;
          exit:{normal, _} -> ok
    end.

%% @doc The Erlang node names, in label order.
-spec nodes(net()) -> [node()].
nodes(Net) -> gen_server:call(Net, nodes, infinity).

%% @doc The labels, in order.
-spec labels(net()) -> [atom()].
labels(Net) -> gen_server:call(Net, labels, infinity).

%% @doc The Erlang node name of a node.
-spec node(net(), node_ref()) -> node().
node(Net, Ref) -> field(Net, Ref, node).

%% @doc The domid of a node.
-spec domid(net(), node_ref()) -> pos_integer().
domid(Net, Ref) -> field(Net, Ref, domid).

%% @doc The OS pid of a running or paused node.
-spec os_pid(net(), node_ref()) -> {ok, string()} | {error, down}.
os_pid(Net, Ref) -> tube_net_node:os_pid(field(Net, Ref, pid)).

%% @doc Runs apply(M, F, A) in a running node, over its control connection
%% (not distribution: it works across partitions). The result, or
%% `{error, paused | down}' for a node that cannot run it; an exception in
%% the node is raised here.
-spec call(net(), node_ref(), module(), atom(), [term()]) -> term().
call(Net, Ref, M, F, A) -> call(Net, Ref, M, F, A, ?CALL_TIMEOUT).

-spec call(net(), node_ref(), module(), atom(), [term()], timeout()) -> term().
call(Net, Ref, M, F, A, Timeout) ->
    case tube_net_node:peer(field(Net, Ref, pid)) of
        {ok, Peer} -> peer:call(Peer, M, F, A, Timeout);
        {error, State} -> {error, State}
    end.

%% @doc Cuts the network into Groups (lists of nodes; the nodes named in no
%% group form one more group). Distribution connections and raw tubes
%% between groups are cut and refused until heal/1, on both sides. Replaces
%% the partition in force. `{error, {badarg, Why}}' for groups that overlap
%% or name unknown nodes.
-spec partition(net(), [[node_ref()]]) -> ok | {error, term()}.
partition(Net, Groups) -> gen_server:call(Net, {partition, Groups}, infinity).

%% @doc Ends the partition: every node permits every other again and the
%% running nodes connect again. Returns once they are connected.
-spec heal(net()) -> ok | {error, term()}.
heal(Net) -> gen_server:call(Net, heal, infinity).

%% @doc SIGSTOP of the node's OS process. Its peers notice through
%% distribution's ticks (`net_ticktime').
-spec pause(net(), node_ref()) -> ok | {error, term()}.
pause(Net, Ref) -> gen_server:call(Net, {pause, Ref}, infinity).

%% @doc SIGCONT; the node then gets the partition and shaping in force.
-spec resume(net(), node_ref()) -> ok | {error, term()}.
resume(Net, Ref) -> gen_server:call(Net, {resume, Ref}, infinity).

%% @doc kill -9 of the node's OS process; returns once it is gone.
-spec kill(net(), node_ref()) -> ok | {error, term()}.
kill(Net, Ref) -> gen_server:call(Net, {kill, Ref}, infinity).

%% @doc Starts a node that is down again, with the same name and domid,
%% under the partition and shaping in force, and connects it to the nodes
%% it may reach. A running or paused node is killed first.
-spec restart(net(), node_ref()) -> ok | {error, term()}.
restart(Net, Ref) -> gen_server:call(Net, {restart, Ref}, infinity).

%% @doc Delays each packet sent with `tube_net_link:send/2' on raw tubes
%% between A and B (both ways) by Latency milliseconds; 0 removes it.
-spec slow(net(), node_ref(), node_ref(), non_neg_integer()) -> ok | {error, term()}.
slow(Net, A, B, Latency) when is_integer(Latency), Latency >= 0 ->
    gen_server:call(Net, {shape, A, B, latency, Latency}, infinity);
slow(_, _, _, _) ->
    erlang:error(badarg).

%% @doc Drops each packet sent with `tube_net_link:send/2' on raw tubes
%% between A and B (both ways) with probability Ratio; 0 removes it.
-spec loss(net(), node_ref(), node_ref(), number()) -> ok | {error, term()}.
loss(Net, A, B, Ratio) when is_number(Ratio), Ratio >= 0, Ratio =< 1 ->
    gen_server:call(Net, {shape, A, B, loss, float(Ratio)}, infinity);
loss(_, _, _, _) ->
    erlang:error(badarg).

%% @doc Delays the distribution traffic between A and B, both ways, by
%% Latency milliseconds; 0 removes it. The link is set up anew to take the
%% change (both sides see `nodedown', then `nodeup'; links and monitors
%% across it fire as for any lost connection), and the call returns once it
%% is up again (unless a partition or a stopped node keeps it down).
%%
%% A slowed link runs over TCP through a relay in A's or B's node (the one
%% that set the connection up, see `tube_net_relay') that holds every chunk
%% of bytes for the latency, in order: messages, ticks and handshakes all
%% arrive Latency ms later, and nothing is lost. Links that are not slowed
%% stay on their carrier with nothing in their path. Dropping part of a
%% distribution channel would break it rather than model a lossy network
%% (it is reliable and ordered by contract), so there is no loss for
%% distribution: a link that fails is partition/2, or kill/2.
-spec slow_dist(net(), node_ref(), node_ref(), non_neg_integer()) -> ok | {error, term()}.
slow_dist(Net, A, B, Latency) when is_integer(Latency), Latency >= 0 ->
    gen_server:call(Net, {shape, A, B, dist, Latency}, infinity);
slow_dist(_, _, _, _) ->
    erlang:error(badarg).

%% @doc Every entry of the log, oldest first.
-spec events(net()) -> [tube_net_log:entry()].
events(Net) -> gen_server:call(Net, events, infinity).

%% @doc Waits until Expected (see `tube_net_log') matches the events that
%% came after the last entry matched by the previous expect (or after
%% start/1, or mark/1). `ok', or `{error, {timeout, Left, Entries}}' with
%% the part of Expected not seen and the entries it was matched against.
-spec expect(net(), tube_net_log:expected(), timeout()) -> ok | {error, term()}.
expect(Net, Expected, Timeout) -> expect(Net, Expected, Timeout, #{}).

%% @doc As expect/3; option `from' (a sequence number) matches the entries
%% after that one instead, and leaves the cursor as it is.
-spec expect(net(), tube_net_log:expected(), timeout(), #{from => non_neg_integer()}) ->
          ok | {error, term()}.
expect(Net, Expected, Timeout, Opts) when is_list(Expected), is_map(Opts) ->
    gen_server:call(Net, {expect, Expected, Timeout, Opts}, infinity);
expect(_, _, _, _) ->
    erlang:error(badarg).

%% @doc Moves the cursor of expect/3 to the end of the log; returns the
%% sequence number of the last entry.
-spec mark(net()) -> non_neg_integer().
mark(Net) -> gen_server:call(Net, mark, infinity).

%%% Server -------------------------------------------------------------------

init(Opts) ->
    process_flag(trap_exit, true),
    Name = list_to_atom("tube_net_" ++ integer_to_list(erlang:unique_integer([positive]))),
    true = register(Name, self()),
    Plan = plan(Opts, Name),
    Nodes = maps:from_list([{L, N#node{pid = start_node(Conf)}} || {L, N, Conf} <- Plan]),
    St0 = #st{name = Name, order = [L || {L, _, _} <- Plan], nodes = Nodes,
              log = tube_net_log:new(), t0 = tube_net_log:now()},
    St1 = log(net_started, St0),
    case boot_all(St1) of
        ok ->
            case mesh(St1#st.order, St1) of
                {ok, St2} -> {ok, St2#st{cursor = tube_net_log:last_seq(St2#st.log)}};
                {error, R, St2} -> _ = shutdown(St2), {stop, R}
            end;
        {error, R} ->
            _ = shutdown(St1),
            {stop, R}
    end.

handle_call(stop, _From, St) ->
    {stop, normal, ok, shutdown(St)};
handle_call(nodes, _From, St) ->
    {reply, [(node_rec(L, St))#node.node || L <- St#st.order], St};
handle_call(labels, _From, St) ->
    {reply, St#st.order, St};
handle_call({field, Ref}, _From, St) ->
    {reply, lookup(Ref, St), St};
handle_call({partition, Groups}, _From, St) ->
    case groups(Groups, St) of
        {ok, Gs} ->
            St1 = log({partition, Gs}, St#st{groups = Gs}),
            [agent(L, block, [blocked(L, St1)], St1) || L <- St1#st.order],
            {reply, ok, St1};
        E ->
            {reply, E, St}
    end;
handle_call(heal, _From, St) ->
    St1 = log(heal, St#st{groups = undefined}),
    [agent(L, clear, [], St1) || L <- St1#st.order],
    case mesh(running(St1), St1) of
        {ok, St2} -> {reply, ok, St2};
        {error, R, St2} -> {reply, {error, R}, St2}
    end;
handle_call({pause, Ref}, _From, St) ->
    with_node(Ref, St, fun(N) -> tube_net_node:pause(N#node.pid) end);
handle_call({resume, Ref}, _From, St) ->
    with_node(Ref, St, fun(N) ->
                               case tube_net_node:resume(N#node.pid) of
                                   ok -> sync_node(N#node.label, St);
                                   E -> E
                               end
                       end);
handle_call({kill, Ref}, _From, St) ->
    with_node(Ref, St, fun(N) -> tube_net_node:kill(N#node.pid) end);
handle_call({restart, Ref}, _From, St) ->
    case lookup(Ref, St) of
        {ok, #node{label = L, pid = Pid}} ->
            _ = tube_net_node:kill(Pid),
            St1 = drain(St),
            case tube_net_node:boot(Pid, blocked(L, St1)) of
                {ok, _} ->
                    case sync_node(L, St1) of
                        ok ->
                            case mesh([L], St1) of
                                {ok, St2} -> {reply, ok, St2};
                                {error, R, St2} -> {reply, {error, R}, St2}
                            end;
                        E ->
                            {reply, E, St1}
                    end;
                E ->
                    {reply, E, St1}
            end;
        E ->
            {reply, E, St}
    end;
handle_call({shape, A, B, What, Value}, _From, St) ->
    case {lookup(A, St), lookup(B, St)} of
        {{ok, #node{label = LA}}, {ok, #node{label = LB}}} when LA =/= LB ->
            Key = pair(LA, LB),
            Old = maps:get(Key, St#st.shapes, #{latency => 0, loss => 0.0, dist => 0}),
            Shape = maps:put(What, Value, Old),
            St1 = St#st{shapes = maps:put(Key, Shape, St#st.shapes)},
            Event = case What of latency -> slow; loss -> loss; dist -> slow_dist end,
            St2 = log({Event, LA, LB, Value}, St1),
            agent(LA, shape, [LB, Shape], St2),
            agent(LB, shape, [LA, Shape], St2),
            case What =:= dist andalso maps:get(dist, Old) =/= Value of
                true -> relink(LA, LB, St2);
                false -> {reply, ok, St2}
            end;
        {{ok, _}, {ok, _}} ->
            {reply, {error, {badarg, same_node}}, St};
        {{ok, _}, E} ->
            {reply, E, St};
        {E, _} ->
            {reply, E, St}
    end;
handle_call(events, _From, St) ->
    St1 = drain(St),
    {reply, tube_net_log:entries(St1#st.log), St1};
handle_call(mark, _From, St) ->
    St1 = drain(St),
    Seq = tube_net_log:last_seq(St1#st.log),
    {reply, Seq, St1#st{cursor = Seq}};
handle_call({expect, Expected, Timeout, Opts}, From, St) ->
    St1 = drain(St),
    Start = maps:get(from, Opts, St1#st.cursor),
    Move = not maps:is_key(from, Opts),
    case tube_net_log:match(Expected, tube_net_log:entries_after(Start, St1#st.log)) of
        {ok, Seq} ->
            {reply, ok, advance(Move, Seq, St1)};
        {more, _} when Timeout =:= 0 ->
            {reply, timeout_reply(Expected, Start, St1), St1};
        {more, _} ->
            Ref = make_ref(),
            _ = case Timeout of
                    infinity -> ok;
                    _ -> erlang:send_after(Timeout, self(), {expect_timeout, Ref})
                end,
            W = {Ref, From, Expected, Start, Move},
            {noreply, St1#st{waiters = [W | St1#st.waiters]}}
    end.

handle_cast(_, St) ->
    {noreply, St}.

handle_info({tube_net_event, _From, Event, Time}, St) ->
    {noreply, log(Event, Time, St)};
handle_info({expect_timeout, Ref}, St) ->
    case lists:keytake(Ref, 1, St#st.waiters) of
        {value, {Ref, From, Expected, Start, _}, Ws} ->
            gen_server:reply(From, timeout_reply(Expected, Start, St)),
            {noreply, St#st{waiters = Ws}};
        false ->
            {noreply, St}
    end;
handle_info(_, St) ->
    {noreply, St}.

terminate(_Reason, St) ->
    _ = shutdown(St),
    ok.

%%% Planning -----------------------------------------------------------------

check_opts(Opts) ->
    N = maps:get(nodes, Opts, undefined),
    Checks = [{nodes, is_integer(N) andalso N >= 1 andalso N =< 64},
              {prefix, is_list(maps:get(prefix, Opts, "n"))},
              {domids, case maps:find(domids, Opts) of
                           error -> true;
                           {ok, Ds} -> is_list(Ds) andalso length(Ds) =:= N andalso
                                           lists:all(fun(D) -> is_integer(D) andalso D >= 1 andalso D =< 16#7FEF end, Ds)
                                           andalso length(lists:usort(Ds)) =:= N
                       end},
              {carrier, lists:member(maps:get(carrier, Opts, tube), [tube, tcp])},
              {apps, is_list(maps:get(apps, Opts, []))},
              {code_paths, is_list(maps:get(code_paths, Opts, []))},
              {args, is_list(maps:get(args, Opts, []))},
              {env, is_env(maps:get(env, Opts, []))},
              {node_opts, is_node_opts(maps:get(node_opts, Opts, #{}), N, maps:get(prefix, Opts, "n"))},
              {net_ticktime, case maps:get(net_ticktime, Opts, 60) of T when is_integer(T), T > 0 -> true; _ -> false end},
              {boot_timeout, case maps:get(boot_timeout, Opts, 1) of B when is_integer(B), B > 0 -> true; _ -> false end},
              {cookie, is_atom(maps:get(cookie, Opts, a))},
              {unique_names, is_boolean(maps:get(unique_names, Opts, false))},
              {prevent_overlapping_partitions, is_boolean(maps:get(prevent_overlapping_partitions, Opts, false))}],
    case [K || {K, false} <- Checks] of
        [] -> ok;
        [K | _] -> {error, {badarg, K}}
    end.

is_env(Env) ->
    is_list(Env) andalso
        lists:all(fun({K, V}) -> io_lib:char_list(K) andalso io_lib:char_list(V);
                     (_) -> false
                  end, Env).

%% Keys are labels of the network; values maps of node_options().
is_node_opts(NodeOpts, N, Prefix) when is_map(NodeOpts), is_integer(N), N >= 0, N =< 64,
                                       is_list(Prefix) ->
    Labels = [list_to_atom(Prefix ++ integer_to_list(I)) || I <- lists:seq(1, N)],
    lists:all(fun({L, O}) ->
                      lists:member(L, Labels) andalso is_map(O) andalso
                          maps:size(maps:without([carrier, args, env], O)) =:= 0 andalso
                          lists:member(maps:get(carrier, O, tube), [tube, tcp]) andalso
                          is_list(maps:get(args, O, [])) andalso
                          is_env(maps:get(env, O, []))
              end, maps:to_list(NodeOpts));
is_node_opts(_, _, _) ->
    false.

%% [{Label, #node{}, NodeConf}] for every node.
plan(Opts, Name) ->
    N = maps:get(nodes, Opts),
    Prefix = maps:get(prefix, Opts, "n"),
    Labels = [list_to_atom(Prefix ++ integer_to_list(I)) || I <- lists:seq(1, N)],
    Domids = maps:get(domids, Opts, default_domids(N)),
    {ok, Host} = inet:gethostname(),
    Short = hd(string:split(Host, ".")),
    Suffix = case maps:get(unique_names, Opts, false) of
                 true -> "_" ++ os:getpid() ++ "x" ++ integer_to_list(erlang:unique_integer([positive]));
                 false -> ""
             end,
    Names = [atom_to_list(L) ++ Suffix || L <- Labels],
    Nodes = [list_to_atom(S ++ "@" ++ Short) || S <- Names],
    NodeOpts = maps:get(node_opts, Opts, #{}),
    Carrier = fun(L) -> maps:get(carrier, maps:get(L, NodeOpts, #{}), maps:get(carrier, Opts, tube)) end,
    Agent = #{controller => Name,
              labels => maps:from_list(lists:zip(Nodes, Labels)),
              domids => maps:from_list(lists:zip(Labels, Domids)),
              tcp_only => [Nd || {L, Nd} <- lists:zip(Labels, Nodes), Carrier(L) =:= tcp]},
    Cookie = maps:get(cookie, Opts, list_to_atom("tube_net_" ++ integer_to_list(rand:uniform(1 bsl 60)))),
    Common = ["-setcookie", atom_to_list(Cookie), "-epmd_module", "tube_net_epmd"]
        ++ ticktime_args(Opts)
        ++ ["-kernel", "prevent_overlapping_partitions",
            atom_to_list(maps:get(prevent_overlapping_partitions, Opts, false))]
        ++ path_args(Opts)
        ++ maps:get(args, Opts, []),
    [{L, #node{label = L, node = Node, domid = D},
      #{server => Name, label => L, name => S, domid => D,
        args => node_args(L, D, Common, Opts, NodeOpts),
        env => node_env(L, Opts, NodeOpts),
        apps => maps:get(apps, Opts, [tube]),
        agent => Agent#{me => L},
        boot_timeout => maps:get(boot_timeout, Opts, 30000)}}
     || {L, S, Node, D} <- zip4(Labels, Names, Nodes, Domids)].

%% 1..N, moved past this node's own domid when it is one of them.
default_domids(N) ->
    Own = case whereis(tube_sup) of
              undefined -> 0;
              _ -> try tube:domid() catch _:_ -> 0 end
          end,
    First = case Own >= 1 andalso Own =< N of
                true -> Own + 1;
                false -> 1
            end,
    lists:seq(First, First + N - 1).

zip4([A | As], [B | Bs], [C | Cs], [D | Ds]) -> [{A, B, C, D} | zip4(As, Bs, Cs, Ds)];
zip4([], [], [], []) -> [].

%% The network's arguments, then the node's own.
node_args(L, Domid, Common, Opts, NodeOpts) ->
    Own = maps:get(L, NodeOpts, #{}),
    Carrier = maps:get(carrier, Own, maps:get(carrier, Opts, tube)),
    ["-tube", "domid", integer_to_list(Domid)]
        ++ carrier_args(Carrier) ++ Common ++ maps:get(args, Own, []).

%% The network's environment, then the node's own (later entries win).
node_env(L, Opts, NodeOpts) ->
    Own = maps:get(env, maps:get(L, NodeOpts, #{}), []),
    maps:to_list(maps:from_list(maps:get(env, Opts, []) ++ Own)).

%% tube: tube connections between the nodes, TCP (guarded as well) to any
%% node the tube carrier cannot reach.
carrier_args(tube) -> ["-proto_dist", "tube_net_tcp", "tube"];
carrier_args(tcp) -> ["-proto_dist", "tube_net_tcp"].

ticktime_args(#{net_ticktime := T}) -> ["-kernel", "net_ticktime", integer_to_list(T)];
ticktime_args(_) -> [].

%% This node's code path minus OTP's own directories, which every node has.
path_args(Opts) ->
    Root = code:root_dir(),
    Own = [P || P <- code:get_path(), not lists:prefix(Root, P), P =/= "."],
    Extra = [unicode:characters_to_list(P) || P <- maps:get(code_paths, Opts, [])],
    lists:append([["-pa", P] || P <- Extra ++ Own]).

start_node(Conf) ->
    {ok, Pid} = tube_net_node:start_link(Conf),
    Pid.

%%% Booting and meshing ------------------------------------------------------

boot_all(St) ->
    Reqs = [{L, gen_statem:send_request(N#node.pid, {boot, []})}
            || L <- St#st.order, N <- [node_rec(L, St)]],
    Results = [{L, gen_statem:wait_response(R, infinity)} || {L, R} <- Reqs],
    case [{L, E} || {L, {reply, E}} <- Results, element(1, E) =/= ok] of
        [] -> ok;
        Failed -> {error, {boot_failed, Failed}}
    end.

%% Connects each of Labels to every running node it may reach, then waits
%% for both sides' nodeup of each of those pairs.
mesh(Labels, St) ->
    Running = running(St),
    Pairs = lists:usort([pair(A, B) || A <- Labels, lists:member(A, Running),
                                       B <- Running, A =/= B, same_group(A, B, St)]),
    Mark = tube_net_log:last_seq(St#st.log),
    Results = [{A, B, connect(A, B, St)} || {A, B} <- Pairs],
    case [{A, B} || {A, B, false} <- Results] of
        [] ->
            New = [{A, B} || {A, B, true} <- Results],
            Expected = [{unordered, lists:append([[{nodeup, A, B}, {nodeup, B, A}] || {A, B} <- New])}],
            case await(Expected, Mark, St) of
                {ok, St1} -> {ok, global_sync(Running, St1)};
                E -> E
            end;
        Failed ->
            {error, {connect_failed, Failed}, St}
    end.

%% true (connected now), already, or false.
connect(A, B, St) ->
    case agent(A, connect, [[(node_rec(B, St))#node.node]], St) of
        [{_, R}] -> R;
        ok -> already  % A stopped running meanwhile: nothing to wait for
    end.

%% Lets `global' on each node finish its exchange with the nodes it just
%% met, so that names registered next are seen everywhere at once.
global_sync(Labels, St) ->
    [agent(L, global_sync, [], St) || L <- Labels],
    St.

%% Waits inside the server for Expected after Mark, logging events as they
%% come.
await(Expected, Mark, St) ->
    Deadline = erlang:monotonic_time(millisecond) + ?MESH_TIMEOUT,
    await_loop(Expected, Mark, Deadline, St).

await_loop(Expected, Mark, Deadline, St) ->
    case tube_net_log:match(Expected, tube_net_log:entries_after(Mark, St#st.log)) of
        {ok, _} ->
            {ok, St};
        {more, Left} ->
            receive
                {tube_net_event, _, Event, Time} -> await_loop(Expected, Mark, Deadline, log(Event, Time, St))
            after max(Deadline - erlang:monotonic_time(millisecond), 0) ->
                {error, {mesh_timeout, Left}, St}
            end
    end.

%% The link between A and B set up again, now that both ends know its new
%% latency: cut on both sides (a relay may hold the close back from the
%% other side for the old latency), and connected again if they may reach
%% each other.
relink(LA, LB, St) ->
    agent(LA, disconnect, [(node_rec(LB, St))#node.node], St),
    agent(LB, disconnect, [(node_rec(LA, St))#node.node], St),
    case mesh([LA], drain(St)) of
        {ok, St1} -> {reply, ok, St1};
        {error, R, St1} -> {reply, {error, R}, St1}
    end.

%% The guard and shaping in force, given to a node that comes back.
sync_node(L, St) ->
    case agent(L, block, [blocked(L, St)], St) of
        ok ->
            [agent(L, shape, [other(L, Pair), Shape], St)
             || {Pair, Shape} <- maps:to_list(St#st.shapes), in_pair(L, Pair)],
            ok;
        E ->
            E
    end.

shutdown(St = #st{nodes = Nodes}) ->
    Reqs = [gen_statem:send_request(N#node.pid, stop) || N <- maps:values(Nodes)],
    [gen_statem:wait_response(R, infinity) || R <- Reqs],
    St1 = drain(St),
    [begin unlink(N#node.pid), exit(N#node.pid, shutdown) end || N <- maps:values(Nodes)],
    St2 = log(net_stopped, St1),
    [gen_server:reply(From, timeout_reply(E, S, St2)) || {_, From, E, S, _} <- St2#st.waiters],
    St2#st{waiters = []}.

%%% Helpers ------------------------------------------------------------------

field(Net, Ref, Field) ->
    case gen_server:call(Net, {field, Ref}, infinity) of
        {ok, N} ->
            case Field of
                node -> N#node.node;
                domid -> N#node.domid;
                pid -> N#node.pid
            end;
        {error, _} ->
            erlang:error(badarg, [Net, Ref])
    end.

lookup(Ref, #st{nodes = Nodes}) when is_atom(Ref) ->
    case maps:find(Ref, Nodes) of
        {ok, N} -> {ok, N};
        error ->
            case [N || N <- maps:values(Nodes), N#node.node =:= Ref] of
                [N] -> {ok, N};
                [] -> {error, {unknown_node, Ref}}
            end
    end;
lookup(Ref, _St) ->
    {error, {unknown_node, Ref}}.

node_rec(L, #st{nodes = Nodes}) -> maps:get(L, Nodes).

with_node(Ref, St, Fun) ->
    case lookup(Ref, St) of
        {ok, N} -> {reply, Fun(N), drain(St)};
        E -> {reply, E, St}
    end.

running(St) ->
    [L || L <- St#st.order, tube_net_node:state((node_rec(L, St))#node.pid) =:= running].

%% Runs an agent function in a running node; a node that is not running
%% gets what is in force when it comes back (sync_node/2).
agent(L, F, A, St) ->
    case tube_net_node:peer((node_rec(L, St))#node.pid) of
        {ok, Peer} ->
            %% A node dying under the call is noticed by its own state
            %% machine (node_down); the server carries on.
            try peer:call(Peer, tube_net_agent, F, A, ?CALL_TIMEOUT)
            catch _:Reason -> {error, {agent, L, Reason}}
            end;
        {error, _} ->
            ok
    end.

groups(Groups, St) when is_list(Groups) ->
    try
        Gs = [[label_of(R, St) || R <- G] || G <- Groups],
        Named = lists:append(Gs),
        length(lists:usort(Named)) =:= length(Named) orelse throw(overlapping_groups),
        Rest = [L || L <- St#st.order, not lists:member(L, Named)],
        {ok, [G || G <- Gs ++ [Rest], G =/= []]}
    catch
        throw:Why -> {error, {badarg, Why}};
        error:_ -> {error, {badarg, groups}}
    end;
groups(_, _) ->
    {error, {badarg, groups}}.

label_of(R, St) ->
    case lookup(R, St) of
        {ok, N} -> N#node.label;
        _ -> throw({unknown_node, R})
    end.

blocked(_L, #st{groups = undefined}) ->
    [];
blocked(L, St = #st{groups = Gs}) ->
    [(node_rec(M, St))#node.node || G <- Gs, not lists:member(L, G), M <- G].

same_group(_A, _B, #st{groups = undefined}) -> true;
same_group(A, B, #st{groups = Gs}) -> lists:any(fun(G) -> lists:member(A, G) andalso lists:member(B, G) end, Gs).

pair(A, B) when A < B -> {A, B};
pair(A, B) -> {B, A}.

in_pair(L, {A, B}) -> L =:= A orelse L =:= B.

other(L, {L, B}) -> B;
other(L, {A, L}) -> A.

%% Takes the events already in the mailbox into the log.
drain(St) ->
    receive
        {tube_net_event, _, Event, Time} -> drain(log(Event, Time, St))
    after 0 ->
        St
    end.

log(Event, St) ->
    log(Event, tube_net_log:now(), St).

log(Event, Time, St = #st{log = Log, t0 = T0}) ->
    {_, Log1} = tube_net_log:add(Event, Time - T0, Log),
    wake(St#st{log = Log1}).

wake(St = #st{waiters = []}) ->
    St;
wake(St = #st{waiters = Ws}) ->
    lists:foldl(fun(W = {_, From, Expected, Start, Move}, Acc) ->
                        case tube_net_log:match(Expected, tube_net_log:entries_after(Start, Acc#st.log)) of
                            {ok, Seq} ->
                                gen_server:reply(From, ok),
                                advance(Move, Seq, Acc#st{waiters = lists:delete(W, Acc#st.waiters)});
                            {more, _} ->
                                Acc
                        end
                end, St, Ws).

advance(true, Seq, St) -> St#st{cursor = max(Seq, St#st.cursor)};
advance(false, _Seq, St) -> St.

timeout_reply(Expected, Start, St) ->
    Entries = tube_net_log:entries_after(Start, St#st.log),
    {more, Left} = tube_net_log:match(Expected, Entries),
    {error, {timeout, Left, Entries}}.
