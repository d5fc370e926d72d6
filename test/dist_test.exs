defmodule DistTest do
  # Erlang distribution over tubes: BEAM OS processes started with
  # `-proto_dist ... tube` reach each other through reliable tubes, and
  # everything distribution does works over them. The nodes are those of a
  # test network (tube_net): n1, n2 (and n3), meshed before each test.
  use TubeTest.NetCase, async: false
  import Bitwise

  alias DistTest.Node, as: N

  @moduletag timeout: 600_000

  # Runs DistTest.Node.f(a) in node `n`.
  defp run(net, n, f, a \\ [], timeout \\ 120_000), do: TubeNet.call(net, n, N, f, a, timeout)

  defp node!(net, n), do: TubeNet.node(net, n)

  test "nodes on this host connect over a tube, and the carrier is shown by node_info", %{
    net: net
  } do
    assert run(net, :n1, :connect, [node!(net, :n2)]) == {:pong, :tube}
    assert run(net, :n2, :carrier, [node!(net, :n1)]) == :tube
    # The connection is a tube of the reserved range on both sides.
    assert [%{tid: tid, peer: _}] = run(net, :n1, :tubes)
    assert tid >= 0xFFFF0000
    assert [%{tid: ^tid}] = run(net, :n2, :tubes)
    # The control plane runs under the kernel since boot: starting the
    # application does not start a second one.
    server = TubeNet.call(net, :n1, :erlang, :whereis, [:tube_registry])
    assert {:ok, _} = TubeNet.call(net, :n1, :application, :ensure_all_started, [:tube])
    assert TubeNet.call(net, :n1, :erlang, :whereis, [:tube_registry]) == server
  end

  test "terms of every type and binaries of 0 B to 64 MiB go both ways unchanged", %{net: net} do
    :ok = run(net, :n2, :start_echo)

    sizes = [
      0,
      1,
      63,
      64,
      65,
      4095,
      4096,
      4097,
      65_535,
      65_536,
      65_537,
      1 <<< 20,
      16 <<< 20,
      64 <<< 20
    ]

    assert run(net, :n1, :echo_samples, [node!(net, :n2), sizes], 600_000) == :ok
    :ok = run(net, :n1, :start_echo)
    assert run(net, :n2, :echo_samples, [node!(net, :n1), [0, 100_000, 5 <<< 20]], 600_000) == :ok
  end

  test "large messages one at a time arrive whole, joined from their fragments and decoded in place",
       %{net: net} do
    b = node!(net, :n2)
    :ok = run(net, :n2, :start_collector)
    before = run(net, :n2, :frag_counts, [node!(net, :n1)])
    assert {%{1 => 100}, [], {size, referenced}} = run(net, :n1, :burst, [b, 1, 100, true], 600_000)
    after_ = run(net, :n2, :frag_counts, [node!(net, :n1)])
    # Interleaved messages earlier on this connection may have left up to 64
    # first fragments to pass unheld; after that every message is joined.
    assert after_.frags_joined - before.frags_joined >= 100 - 64
    # The last payload is part of the buffer its message was joined in, not a copy.
    assert referenced > size + 32
  end

  # Messages per sender; scripts/soak.sh sends more (TUBE_DIST_BURST).
  @burst String.to_integer(System.get_env("TUBE_DIST_BURST") || "25")

  test "large messages from many processes at once keep their order, contents and atoms", %{
    net: net
  } do
    :ok = run(net, :n2, :start_collector)
    senders = 6
    assert {seen, [], _} = run(net, :n1, :burst, [node!(net, :n2), senders, @burst, false], 3_600_000)
    assert seen == Map.new(1..senders, &{&1, @burst})
    IO.puts("\n  #{senders * @burst} large messages: #{inspect(run(net, :n2, :frag_counts, [node!(net, :n1)]))}")
  end

  test "a million messages arrive in order", %{net: net} do
    :ok = run(net, :n2, :start_counter)
    assert run(net, :n1, :flood, [node!(net, :n2), 1_000_000], 600_000) == {1_000_000, true}
  end

  test "gen_server:call, erpc and rpc", %{net: net} do
    [a, b] = TubeNet.nodes(net)
    :ok = run(net, :n2, :start_agent)
    assert run(net, :n1, :agent_calls, [b, 2000]) == 2000
    assert TubeNet.call(net, :n1, :erpc, :call, [b, :erlang, :node, []]) == b
    assert TubeNet.call(net, :n1, :rpc, :call, [b, :lists, :reverse, [[1, 2, 3]]]) == [3, 2, 1]
    assert {[_, _], []} = TubeNet.call(net, :n1, :rpc, :multicall, [[a, b], :erlang, :node, []])
  end

  test "links and monitors across nodes", %{net: net} do
    assert run(net, :n1, :links_and_monitors, [node!(net, :n2)]) == {:killed, :boom, :noproc}
  end

  test "kill -9 of a peer: nodedown and DOWN noconnection", %{net: net} do
    :ok = run(net, :n1, :watch, [node!(net, :n2)])
    t0 = run(net, :n1, :clock)
    :ok = TubeNet.kill(net, :n2)
    seen = run(net, :n1, :watched, [t0])
    assert %{:nodedown => ms, {:down, :noconnection} => _} = seen
    assert :ok = TubeNet.expect(net, [{:killed, :n2}, {:nodedown, :n1, :n2}], 10_000)
    IO.puts("\n  nodedown #{ms} ms after kill -9")
  end

  test "kill -9 of a peer halfway through a large message: nodedown, and the fragments held are freed",
       %{net: net} do
    a = node!(net, :n1)
    :ok = run(net, :n2, :start_sink)
    :ok = run(net, :n2, :watch, [a])
    before = run(net, :n2, :binary_memory)
    # 64 MiB messages without a pause: a kill lands inside one.
    :ok = run(net, :n1, :stream_to_sink, [node!(net, :n2), 64 <<< 20])
    assert run(net, :n2, :await_joined, [a, 2])
    t0 = run(net, :n2, :clock)
    :ok = TubeNet.kill(net, :n1)
    assert %{:nodedown => ms} = run(net, :n2, :watched, [t0])
    assert :ok = TubeNet.expect(net, [{:killed, :n1}, {:nodedown, :n2, :n1}], 10_000)
    # Up to 64 MiB of a message was held when the port closed (which may
    # come a little after nodedown).
    assert run(net, :n2, :await_no_tubes) == []
    limit = before + (8 <<< 20)
    assert run(net, :n2, :await_binary_memory_below, [limit]) < limit
    IO.puts("\n  nodedown #{ms} ms after kill -9 inside a 64 MiB message")
  end

  @tag net: [nodes: 2, net_ticktime: 4]
  test "an idle connection is kept up by ticks, which move the receive counter", %{net: net} do
    :ok = run(net, :n1, :watch, [node!(net, :n2)])

    received = fn ->
      [%{received: r}] = run(net, :n1, :tubes)
      r
    end

    r0 = received.()
    # Nothing is sent: only ticks (empty messages) arrive, one per second
    # with net_ticktime 4, and they count.
    TubeTest.Checks.wait_until(fn -> received.() >= r0 + 6 end, 5_000)
    assert run(net, :n1, :watched_now) == %{}
    assert run(net, :n1, :carrier, [node!(net, :n2)]) == :tube
  end

  @tag net: [nodes: 2, net_ticktime: 4]
  test "a frozen peer (SIGSTOP) is dropped when net_ticktime expires", %{net: net} do
    :ok = run(net, :n1, :watch, [node!(net, :n2)])
    t0 = run(net, :n1, :clock)
    :ok = TubeNet.pause(net, :n2)
    seen = run(net, :n1, :watched, [t0])
    assert %{:nodedown => ms, {:down, :noconnection} => _} = seen
    assert :ok = TubeNet.expect(net, [{:paused, :n2}, {:nodedown, :n1, :n2}], 10_000)
    IO.puts("\n  nodedown #{ms} ms after SIGSTOP, net_ticktime 4")
  end

  test "global and pg see each other's names", %{net: net} do
    pid = run(net, :n1, :global_register, [:dist_test_global])
    assert run(net, :n2, :global_whereis, [:dist_test_global]) == pid
    :ok = run(net, :n2, :pg_start)
    member = run(net, :n1, :pg_join, [:grp])
    assert run(net, :n2, :pg_members, [:grp, 1]) == [member]
  end

  @tag net: [nodes: 3, node_opts: %{n3: %{carrier: :tcp}}]
  test "a mixed cluster: two tube nodes and a TCP-only node, all meshed", %{net: net} do
    [a, b, c] = TubeNet.nodes(net)
    assert run(net, :n1, :connect, [c]) == {:pong, :tcp}
    assert run(net, :n2, :connect, [c]) == {:pong, :tcp}
    assert run(net, :n3, :carrier, [a]) == :tcp
    assert run(net, :n1, :carrier, [b]) == :tube
    # The TCP-only node runs no tube distribution.
    assert TubeNet.call(net, :n3, :init, :get_argument, [:proto_dist]) ==
             {:ok, [[~c"tube_net_tcp"]]}

    for x <- [:n1, :n2, :n3], do: :ok = run(net, x, :start_echo)

    for {x, xn} <- [n1: a, n2: b, n3: c], {y, yn} <- [n1: a, n2: b, n3: c], x != y do
      assert run(net, x, :echo_all, [yn, [{xn, "to", yn}, :binary.copy("m", 100_000)]]) == :ok,
             "#{x} -> #{y}"
    end
  end

  test "a restarted peer is reached over a tube again", %{net: net} do
    b = node!(net, :n2)
    assert run(net, :n1, :connect, [b]) == {:pong, :tube}
    :ok = run(net, :n1, :watch, [b])
    t0 = run(net, :n1, :clock)
    # The node stops by itself (init:stop/0), as a node being shut down does.
    :ok = TubeNet.call(net, :n2, :init, :stop, [])
    assert %{nodedown: _} = run(net, :n1, :watched, [t0])
    assert :ok = TubeNet.expect(net, [{:node_down, :n2, :exited}], 30_000)
    :ok = TubeNet.restart(net, :n2)
    assert TubeNet.call(net, :n2, :erlang, :node, []) == b
    assert run(net, :n1, :connect, [b]) == {:pong, :tube}
    :ok = run(net, :n2, :start_echo)
    assert run(net, :n1, :echo_all, [b, [:again]]) == :ok
  end

  test "mnesia: a table replicated over a tube, written on both sides, survives kill -9 and restart of one",
       %{net: net} do
    [a, b] = TubeNet.nodes(net)
    assert run(net, :n1, :connect, [b]) == {:pong, :tube}
    :ok = run(net, :n1, :mnesia_join, [[]])
    :ok = run(net, :n2, :mnesia_join, [[a]])
    :ok = run(net, :n1, :mnesia_create, [[a, b]])
    :ok = run(net, :n2, :mnesia_wait)
    :ok = run(net, :n1, :mnesia_write, [1..300])
    :ok = run(net, :n2, :mnesia_write, [301..600])
    copy = run(net, :n1, :mnesia_local_copy)
    assert length(copy) == 600
    assert run(net, :n2, :mnesia_local_copy) == copy

    :ok = TubeNet.kill(net, :n2)
    :ok = run(net, :n1, :mnesia_write, [601..700])
    # Same node name and domid; it rejoins from an empty RAM schema.
    :ok = TubeNet.restart(net, :n2)
    :ok = run(net, :n2, :mnesia_join, [[a]])
    :ok = run(net, :n2, :mnesia_wait)
    assert run(net, :n2, :carrier, [a]) == :tube
    :ok = run(net, :n2, :mnesia_write, [701..800])
    copy = run(net, :n1, :mnesia_local_copy)
    assert length(copy) == 800
    assert run(net, :n2, :mnesia_local_copy) == copy
  end

  # The network of this test has a Xenstore of its own (its nodes start the
  # daemon), so that killing the daemon leaves the suite's alone.
  @tag net: false
  test "connections stay up when the Xenstore daemon dies" do
    dir = Path.join(System.tmp_dir!(), "tube-dist-xs-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    socket = Path.join(dir, "xs.sock")

    on_exit(fn ->
      TubeTest.Checks.signal_daemon(socket, "KILL")
      File.rm_rf(dir)
    end)

    {:ok, net} = TubeNet.start(nodes: 2, env: [XENSTORED_PATH: socket])
    on_exit(fn -> TubeNet.stop(net) end)
    b = node!(net, :n2)
    assert run(net, :n1, :connect, [b]) == {:pong, :tube}
    :ok = run(net, :n1, :watch, [b])
    for x <- [:n1, :n2], do: :ok = run(net, x, :start_echo)
    old = TubeTest.Checks.daemon_pid(socket)
    assert old
    TubeTest.Checks.signal_daemon(socket, "KILL")
    # The nodes notice and start a new daemon; the tube between them does
    # not depend on Xenstore.
    TubeTest.Checks.wait_until(
      fn -> TubeTest.Checks.daemon_pid(socket) not in [nil, old] end,
      3_000
    )

    assert run(net, :n1, :echo_all, [b, [:after_daemon_death, :binary.copy("d", 200_000)]]) == :ok
    assert run(net, :n2, :echo_all, [node!(net, :n1), [:after_daemon_death]]) == :ok
    assert run(net, :n1, :carrier, [b]) == :tube
    assert run(net, :n1, :watched_now) == %{}
  end
end
