%% @private
%% One node of a test network: its BEAM OS process, started with OTP's
%% `peer' over standard I/O (so that the controller keeps hold of it
%% whatever happens to distribution), and its life as a state machine:
%%
%%   down --boot--> running --pause--> paused --resume--> running
%%   running | paused --kill | stop | the process dies--> down
%%
%% Each change of state is reported to the network's server as an event:
%% `{paused, L}', `{resumed, L}' and `{killed, L}' just before the signal
%% is sent (so that they come before the events their effects cause),
%% `{node_up, L}' once the node runs, `{node_down, L, Reason}' once its
%% process is gone, Reason `killed', `stopped' or `exited'.
-module(tube_net_node).
-behaviour(gen_statem).

-export([start_link/1, boot/2, pause/1, resume/1, kill/1, stop/1, peer/1,
         os_pid/1, state/1]).
-export([callback_mode/0, init/1, down/3, running/3, paused/3, terminate/3]).

-define(EXIT_WAIT, 10000).
-define(EPMD_ADDRESS, {127, 0, 0, 1}).

-record(d, {
    conf :: map(),
    peer :: pid() | undefined,
    mon :: reference() | undefined,
    os_pid :: string() | undefined,
    node :: node() | undefined
}).

%% @doc Conf: `server' (registered name of the net's server), `label',
%% `name' (short node name), `domid', `args' (extra emulator arguments),
%% `env' (`{Name, Value}' for the OS environment),
%% `apps', `agent' (the agent's start configuration), `boot_timeout'.
start_link(Conf) -> gen_statem:start_link(?MODULE, Conf, []).

%% @doc Starts the OS process, the agent (refusing Blocked from the
%% start) and the applications. `{ok, Node}' or `{error, Reason}'.
boot(Pid, Blocked) -> gen_statem:call(Pid, {boot, Blocked}, infinity).

%% @doc SIGSTOP. `ok' | `{error, State}'.
pause(Pid) -> gen_statem:call(Pid, pause, infinity).

%% @doc SIGCONT. `ok' | `{error, State}'.
resume(Pid) -> gen_statem:call(Pid, resume, infinity).

%% @doc kill -9, and wait for the process to be gone. `ok' | `{error, down}'.
kill(Pid) -> gen_statem:call(Pid, kill, infinity).

%% @doc Stops the node (halt, or kill -9 when paused) and waits for its OS
%% process to be gone. Always `ok'.
stop(Pid) -> gen_statem:call(Pid, stop, infinity).

%% @doc The `peer' process of a running node: `{ok, Peer}' | `{error, State}'.
peer(Pid) -> gen_statem:call(Pid, peer, infinity).

%% @doc The OS pid (a string) of a running or paused node.
os_pid(Pid) -> gen_statem:call(Pid, os_pid, infinity).

%% @doc `down' | `running' | `paused'.
state(Pid) -> gen_statem:call(Pid, state, infinity).

callback_mode() -> state_functions.

init(Conf) ->
    process_flag(trap_exit, true),
    {ok, down, #d{conf = Conf}}.

%% --- down ---------------------------------------------------------------

down({call, From}, {boot, Blocked}, D) ->
    case start_peer(D, Blocked) of
        {ok, D1} ->
            event({node_up, label(D)}, D),
            {next_state, running, D1, [{reply, From, {ok, D1#d.node}}]};
        {error, _} = E ->
            {keep_state_and_data, [{reply, From, E}]}
    end;
down({call, From}, stop, _D) ->
    {keep_state_and_data, [{reply, From, ok}]};
down(EventType, Event, D) ->
    common(EventType, Event, down, D).

%% --- running ------------------------------------------------------------

running({call, From}, pause, D) ->
    event({paused, label(D)}, D),
    signal("STOP", D),
    {next_state, paused, D, [{reply, From, ok}]};
running({call, From}, peer, #d{peer = P}) ->
    {keep_state_and_data, [{reply, From, {ok, P}}]};
running({call, From}, stop, D) ->
    catch peer:stop(D#d.peer),
    {next_state, down, gone(stopped, D), [{reply, From, ok}]};
running(EventType, Event, D) ->
    common(EventType, Event, running, D).

%% --- paused -------------------------------------------------------------

paused({call, From}, resume, D) ->
    event({resumed, label(D)}, D),
    signal("CONT", D),
    {next_state, running, D, [{reply, From, ok}]};
paused({call, From}, stop, D) ->
    signal("KILL", D),
    {next_state, down, gone(stopped, D), [{reply, From, ok}]};
paused(EventType, Event, D) ->
    common(EventType, Event, paused, D).

%% --- in every state -----------------------------------------------------

common({call, From}, kill, State, D) when State =/= down ->
    event({killed, label(D)}, D),
    signal("KILL", D),
    {next_state, down, gone(killed, D), [{reply, From, ok}]};
common({call, From}, os_pid, State, #d{os_pid = P}) when State =/= down ->
    {keep_state_and_data, [{reply, From, {ok, P}}]};
common({call, From}, state, State, _D) ->
    {keep_state_and_data, [{reply, From, State}]};
common({call, From}, _, State, _D) ->
    {keep_state_and_data, [{reply, From, {error, State}}]};
common(info, {'DOWN', Mon, process, _, _}, State, D = #d{mon = Mon}) when State =/= down ->
    %% The OS process ended by itself (halt, crash, a signal from elsewhere).
    {next_state, down, gone(exited, D#d{mon = undefined})};
common(info, _, _State, _D) ->
    keep_state_and_data.

terminate(_Reason, State, D) when State =/= down ->
    signal("KILL", D),
    _ = gone(stopped, D),
    ok;
terminate(_Reason, _State, _D) ->
    ok.

%% ------------------------------------------------------------------------

start_peer(D = #d{conf = Conf}, Blocked) ->
    #{name := Name, args := Args, boot_timeout := BootTimeout} = Conf,
    Opts = #{name => Name, connection => standard_io, args => Args,
             env => maps:get(env, Conf, []), wait_boot => BootTimeout},
    try peer:start(Opts) of
        {ok, Peer, Node} ->
            Mon = erlang:monitor(process, Peer),
            D1 = D#d{peer = Peer, mon = Mon, node = Node},
            case setup(Peer, Conf, Blocked) of
                {ok, OsPid} ->
                    {ok, D1#d{os_pid = OsPid}};
                E ->
                    catch peer:stop(Peer),
                    _ = gone(stopped, D1),
                    E
            end;
        E ->
            {error, {boot, E}}
    catch
        C:R -> {error, {boot, {C, R}}}
    end.

setup(Peer, Conf = #{agent := Agent, apps := Apps, domid := Domid}, Blocked) ->
    T = maps:get(boot_timeout, Conf),
    OsPid = peer:call(Peer, os, getpid, [], T),
    case peer:call(Peer, tube_net_agent, start, [Agent#{blocked => Blocked}], T) of
        ok ->
            case start_apps(Peer, Apps, T) of
                ok -> check_domid(Peer, Apps, Domid, OsPid, T);
                E -> E
            end;
        E ->
            {error, {agent, E}}
    end.

start_apps(_Peer, [], _T) ->
    ok;
start_apps(Peer, [App | Apps], T) ->
    case peer:call(Peer, application, ensure_all_started, [App], T) of
        {ok, _} -> start_apps(Peer, Apps, T);
        {error, R} -> {error, {app, App, R}}
    end.

check_domid(Peer, Apps, Domid, OsPid, T) ->
    case lists:member(tube, Apps) of
        false ->
            {ok, OsPid};
        true ->
            case peer:call(Peer, tube, domid, [], T) of
                Domid -> {ok, OsPid};
                Other -> {error, {domid, Domid, Other}}
            end
    end.

%% The process is gone or going: wait for the peer process to notice (its
%% port closes when the OS process ends), then for the OS process itself.
gone(Reason, D = #d{mon = Mon, peer = Peer, os_pid = OsPid}) ->
    case Mon of
        undefined ->
            ok;
        _ ->
            receive
                {'DOWN', Mon, process, _, _} -> ok
            after ?EXIT_WAIT ->
                signal("KILL", D),
                erlang:demonitor(Mon, [flush]),
                catch exit(Peer, kill)
            end
    end,
    wait_os_exit(OsPid),
    wait_epmd_release(D),
    event({node_down, label(D), Reason}, D),
    D#d{peer = undefined, mon = undefined, os_pid = undefined}.

%% The peer process learns of the exit from its port; the OS process may
%% still be a moment from being reaped.
wait_os_exit(undefined) ->
    ok;
wait_os_exit(OsPid) ->
    wait_os_exit(OsPid, ?EXIT_WAIT div 10).

wait_os_exit(OsPid, 0) ->
    kill_process("KILL", OsPid),
    ok;
wait_os_exit(OsPid, N) ->
    case alive(OsPid) of
        false ->
            ok;
        true ->
            receive after 10 -> ok end,
            wait_os_exit(OsPid, N - 1)
    end.

%% epmd frees a name when it sees the node's connection close, a moment
%% after the process is gone; a restart before that would find the name
%% taken (the TCP carrier would not listen). There is no event for it: ask
%% epmd until the name is gone, or epmd is (it never held the name then).
%% epmd is asked at its loopback address: resolving the host name would
%% start OTP's resolver process in this node for good.
wait_epmd_release(#d{conf = #{name := Name}}) ->
    wait_epmd_release(Name, ?EXIT_WAIT div 10).

wait_epmd_release(_Name, 0) ->
    ok;
wait_epmd_release(Name, N) ->
    case erl_epmd:names(?EPMD_ADDRESS) of
        {ok, Names} ->
            case lists:keymember(Name, 1, Names) of
                true ->
                    receive after 10 -> ok end,
                    wait_epmd_release(Name, N - 1);
                false ->
                    ok
            end;
        _ ->
            ok
    end.

%% Alive and not a zombie waiting to be reaped.
alive(OsPid) ->
    case file:read_file("/proc/" ++ OsPid ++ "/stat") of
        {ok, Stat} ->
            case binary:split(Stat, <<") ">>) of
                [_, <<"Z", _/binary>>] -> false;
                _ -> true
            end;
        _ ->
            false
    end.

signal(_Sig, #d{os_pid = undefined}) ->
    ok;
signal(Sig, #d{os_pid = OsPid}) ->
    kill_process(Sig, OsPid).

%% kill(1) run directly, without a shell in between; returns once it has
%% sent the signal. A process already gone is not an error here.
kill_process(Sig, OsPid) ->
    case os:find_executable("kill") of
        false ->
            _ = os:cmd("kill -" ++ Sig ++ " " ++ OsPid ++ " 2>/dev/null"),
            ok;
        Kill ->
            Port = open_port({spawn_executable, Kill},
                             [{args, ["-" ++ Sig, OsPid]}, exit_status, stderr_to_stdout]),
            kill_wait(Port)
    end.

kill_wait(Port) ->
    receive
        {Port, {exit_status, _}} -> ok;
        {Port, {data, _}} -> kill_wait(Port)
    end.

label(#d{conf = #{label := L}}) -> L.

event(E, #d{conf = #{server := S, label := L}}) ->
    S ! {tube_net_event, L, E, tube_net_log:now()},
    ok.
