defmodule DistTest do
  # Erlang distribution over tubes: BEAM OS processes started with
  # `-proto_dist inet_tcp tube` reach each other through reliable tubes, and
  # everything distribution does works over them.
  use ExUnit.Case, async: false
  import Bitwise

  alias DistTest.Node, as: N

  @moduletag timeout: 600_000

  defp uniq(base), do: :"#{base}#{System.unique_integer([:positive])}"

  defp start(name, opts \\ []) do
    n = N.start(uniq(name), opts)
    on_exit(fn -> N.stop(n) end)
    n
  end

  # Two tube nodes connected to each other.
  defp pair(opts \\ []) do
    a = start("a", opts)
    b = start("b", opts)
    assert N.call(a, N, :connect, [b.node]) == {:pong, :tube}
    {a, b}
  end

  test "nodes on this host connect over a tube, and the carrier is shown by node_info" do
    {a, b} = pair()
    assert N.call(b, N, :carrier, [a.node]) == :tube
    # The connection is a tube of the reserved range on both sides.
    assert [%{tid: tid, peer: _}] = N.call(a, N, :tubes, [])
    assert tid >= 0xFFFF0000
    assert [%{tid: ^tid}] = N.call(b, N, :tubes, [])
  end

  test "terms of every type and binaries of 0 B to 64 MiB go both ways unchanged" do
    {a, b} = pair()
    :ok = N.call(b, N, :start_echo, [])
    sizes = [0, 1, 63, 64, 65, 4095, 4096, 4097, 65_535, 65_536, 65_537, 1 <<< 20, 16 <<< 20, 64 <<< 20]
    assert N.call(a, N, :echo_samples, [b.node, sizes], 600_000) == :ok
    :ok = N.call(a, N, :start_echo, [])
    assert N.call(b, N, :echo_samples, [a.node, [0, 100_000, 5 <<< 20]], 600_000) == :ok
  end

  test "a million messages arrive in order" do
    {a, b} = pair()
    :ok = N.call(b, N, :start_counter, [])
    assert N.call(a, N, :flood, [b.node, 1_000_000], 600_000) == {1_000_000, true}
  end

  test "gen_server:call, erpc and rpc" do
    {a, b} = pair()
    :ok = N.call(b, N, :start_agent, [])
    assert N.call(a, N, :agent_calls, [b.node, 2000]) == 2000
    assert N.call(a, :erpc, :call, [b.node, :erlang, :node, []]) == b.node
    assert N.call(a, :rpc, :call, [b.node, :lists, :reverse, [[1, 2, 3]]]) == [3, 2, 1]
    assert {[_, _], []} = N.call(a, :rpc, :multicall, [[a.node, b.node], :erlang, :node, []])
  end

  test "links and monitors across nodes" do
    {a, b} = pair()
    assert N.call(a, N, :links_and_monitors, [b.node]) == {:killed, :boom, :noproc}
  end

  test "kill -9 of a peer: nodedown and DOWN noconnection" do
    {a, b} = pair()
    :ok = N.call(a, N, :watch, [b.node])
    t0 = N.call(a, N, :clock, [])
    N.signal(b, "KILL")
    seen = N.call(a, N, :watched, [t0])
    assert %{:nodedown => ms, {:down, :noconnection} => _} = seen
    IO.puts("\n  nodedown #{ms} ms after kill -9")
  end

  test "a frozen peer (SIGSTOP) is dropped when net_ticktime expires" do
    {a, b} = pair(ticktime: 4)
    :ok = N.call(a, N, :watch, [b.node])
    t0 = N.call(a, N, :clock, [])
    N.signal(b, "STOP")
    on_exit(fn -> N.signal(b, "CONT") end)
    seen = N.call(a, N, :watched, [t0])
    assert %{:nodedown => ms, {:down, :noconnection} => _} = seen
    IO.puts("\n  nodedown #{ms} ms after SIGSTOP, net_ticktime 4")
  end

  test "global and pg see each other's names" do
    {a, b} = pair()
    pid = N.call(a, N, :global_register, [:dist_test_global])
    assert N.call(b, N, :global_whereis, [:dist_test_global]) == pid
    :ok = N.call(b, N, :pg_start, [])
    member = N.call(a, N, :pg_join, [:grp])
    assert N.call(b, N, :pg_members, [:grp, 1]) == [member]
  end

  test "a mixed cluster: two tube nodes and a TCP-only node, all meshed" do
    {a, b} = pair()
    c = start("c", tube: false)
    assert N.call(a, N, :connect, [c.node]) == {:pong, :tcp}
    assert N.call(b, N, :connect, [c.node]) == {:pong, :tcp}
    assert N.call(c, N, :carrier, [a.node]) == :tcp
    assert N.call(a, N, :carrier, [b.node]) == :tube
    for x <- [a, b, c], do: :ok = N.call(x, N, :start_echo, [])
    for x <- [a, b, c], y <- [a, b, c], x != y do
      assert N.call(x, N, :echo_all, [y.node, [{x.node, "to", y.node}, :binary.copy("m", 100_000)]]) == :ok
    end
  end

  test "a restarted peer is reached over a tube again" do
    a = start("a")
    name = uniq("b")
    b1 = N.start(name)
    assert N.call(a, N, :connect, [b1.node]) == {:pong, :tube}
    :ok = N.call(a, N, :watch, [b1.node])
    t0 = N.call(a, N, :clock, [])
    N.stop(b1)
    assert %{nodedown: _} = N.call(a, N, :watched, [t0])
    b2 = N.start(name)
    on_exit(fn -> N.stop(b2) end)
    assert b2.node == b1.node
    assert N.call(a, N, :connect, [b2.node]) == {:pong, :tube}
    :ok = N.call(b2, N, :start_echo, [])
    assert N.call(a, N, :echo_all, [b2.node, [:again]]) == :ok
  end

  test "mnesia: a table replicated over a tube, written on both sides, survives kill -9 and restart of one" do
    a = start("a")
    name = uniq("b")
    b = N.start(name)
    assert N.call(a, N, :connect, [b.node]) == {:pong, :tube}
    :ok = N.call(a, N, :mnesia_join, [[]])
    :ok = N.call(b, N, :mnesia_join, [[a.node]])
    :ok = N.call(a, N, :mnesia_create, [[a.node, b.node]])
    :ok = N.call(b, N, :mnesia_wait, [])
    :ok = N.call(a, N, :mnesia_write, [1..300])
    :ok = N.call(b, N, :mnesia_write, [301..600])
    copy = N.call(a, N, :mnesia_local_copy, [])
    assert length(copy) == 600
    assert N.call(b, N, :mnesia_local_copy, []) == copy

    N.signal(b, "KILL")
    N.stop(b)
    :ok = N.call(a, N, :mnesia_write, [601..700])
    b2 = N.start(name)
    on_exit(fn -> N.stop(b2) end)
    :ok = N.call(b2, N, :mnesia_join, [[a.node]])
    :ok = N.call(b2, N, :mnesia_wait, [])
    assert N.call(b2, N, :carrier, [a.node]) == :tube
    :ok = N.call(b2, N, :mnesia_write, [701..800])
    copy = N.call(a, N, :mnesia_local_copy, [])
    assert length(copy) == 800
    assert N.call(b2, N, :mnesia_local_copy, []) == copy
  end

  test "connections stay up when the Xenstore daemon dies" do
    dir = Path.join(System.tmp_dir!(), "tube-dist-xs-#{System.unique_integer([:positive])}")
    File.mkdir_p!(dir)
    socket = Path.join(dir, "xs.sock")
    on_exit(fn ->
      TubeTest.Checks.signal_daemon(socket, "KILL")
      File.rm_rf(dir)
    end)

    a = start("a", env: [XENSTORED_PATH: socket])
    b = start("b", env: [XENSTORED_PATH: socket])
    assert N.call(a, N, :connect, [b.node]) == {:pong, :tube}
    :ok = N.call(a, N, :watch, [b.node])
    for x <- [a, b], do: :ok = N.call(x, N, :start_echo, [])
    old = TubeTest.Checks.daemon_pid(socket)
    assert old
    TubeTest.Checks.signal_daemon(socket, "KILL")
    # The nodes notice and start a new daemon; the tube between them does
    # not depend on Xenstore.
    TubeTest.Checks.wait_until(fn -> TubeTest.Checks.daemon_pid(socket) not in [nil, old] end, 3_000)
    assert N.call(a, N, :echo_all, [b.node, [:after_daemon_death, :binary.copy("d", 200_000)]]) == :ok
    assert N.call(b, N, :echo_all, [a.node, [:after_daemon_death]]) == :ok
    assert N.call(a, N, :carrier, [b.node]) == :tube
    assert N.call(a, N, :watched_now, []) == %{}
  end
end
