defmodule DistLimitsTest do
  # The distribution carrier at the file-descriptor limit. A tube costs each
  # node descriptors of its own (the ring's memfd, the event socket) beside
  # those the node holds already (its Xenstore connection, its listen
  # socket, its other tubes): a node that has none left cannot set a
  # connection up. A connection it tries to make, or that a node tries to
  # make to it, must then fail as one to an unreachable node does (`pang`:
  # a node tube_dist has said it reaches is not left to TCP), and leave no
  # tube, port, Xenstore entry or descriptor behind on either side; the node
  # must run on with its other connections; and once it has descriptors
  # again, connections come up over tubes.
  #
  # The nodes are BEAM OS processes started with `-proto_dist inet_tcp tube`
  # on a private Xenstore daemon (DistTest.Limits): a runs under `ulimit -n`,
  # connects to b, then takes every descriptor it can get (files opened
  # until `emfile`); c is the node it tries to reach, or that tries to reach
  # it. The nodes run with `-connect_all false`: `global` would otherwise
  # connect them to each other behind the test's back, and cut a's
  # connection to b once b reached a node that a cannot.
  use ExUnit.Case, async: false
  import Bitwise

  alias DistTest.Hostile, as: H
  alias DistTest.Limits, as: L
  alias DistTest.Node, as: N
  alias TubeTest.CtrlWorld

  @moduletag timeout: 600_000

  # Few enough descriptors for a to take them all at once, enough to boot.
  @ulimit_n 256

  # What a node holds of connections other than the ones it should.
  @nothing %{tubes: [], ports: [], xenstore: []}

  # Emulator arguments of a node besides the carrier's come from the tag
  # `args: %{b: [...]}`.
  setup tags do
    w = CtrlWorld.new([])
    on_exit(fn -> CtrlWorld.cleanup(w, []) end)
    cookie = :"dist_limits_#{System.unique_integer([:positive])}"
    args = Map.get(tags, :args, %{})

    [a, b, c] =
      for {role, opts} <- [a: [ulimit_n: @ulimit_n], b: [], c: []] do
        node_args = ["-connect_all", "false"] ++ Map.get(args, role, [])
        n = L.start(w, role, [cookie: cookie, args: node_args] ++ opts)
        on_exit(fn -> L.stop(n) end)
        n
      end

    assert connect(a, b) == {:pong, :tube}
    %{w: w, a: a, b: b, c: c}
  end

  # Runs m.f(a) in node `n`.
  defp run(n, m, f, a), do: L.call(n, m, f, a)

  defp ping(from, to), do: run(from, :net_adm, :ping, [to.node])

  defp connect(from, to), do: run(from, N, :connect, [to.node])

  defp connected(n), do: run(n, :erlang, :nodes, [[:visible, :hidden]])

  # Three pings from `from` to `to`, each pang and connecting neither. Each
  # attempt gives back what it took: the next finds the nodes as the first
  # did.
  defp pang_thrice(from, to) do
    for _ <- 1..3 do
      assert ping(from, to) == :pang
      refute to.node in connected(from)
      refute from.node in connected(to)
    end
  end

  defp fd_count(n), do: length(run(n, L, :fds, []))

  # Takes every descriptor a can get; how many files it holds.
  defp exhaust(a) do
    assert {:ok, held} = run(a, L, :exhaust, [])
    assert held > 0
    assert run(a, L, :can_open?, []) == :emfile
    held
  end

  # What node `n` holds besides its connections to `peers`: tubes in its
  # control plane, tube ports, tube entries in Xenstore for other domains
  # (each waited for, 30 s at most). @nothing when nothing is left.
  defp leftovers(w, n, peers) do
    nodes = for p <- peers, do: p.node

    %{
      tubes: run(n, H, :await_tubes_of, [nodes]),
      ports: run(n, H, :await_ports_of, [nodes]),
      xenstore: L.await_xs_peers(w, n.domid, for(p <- peers, do: p.domid))
    }
  end

  # The processes a node cannot lose without losing its distribution.
  defp vital(n),
    do: for(name <- [:tube_registry, :net_kernel], do: run(n, :erlang, :whereis, [name]))

  # a runs, with the control plane and net_kernel it had, and its connection
  # to b carries calls both ways and a message of 1 MiB (sent in fragments).
  defp still_serving(a, b, vital) do
    assert L.os_alive?(a)
    assert vital(a) == vital
    assert connected(a) == [b.node]
    assert run(a, :erpc, :call, [b.node, :erlang, :node, []]) == b.node
    assert run(b, :erpc, :call, [a.node, :erlang, :node, []]) == a.node
    assert run(a, L, :round_trip, [b.node, 1 <<< 20])
  end

  test "out of fds, a node's pings to a tube node are pang; it runs on with its connection, neither side keeps anything of the attempts, and with its fds back it connects over a tube",
       %{w: w, a: a, b: b, c: c} do
    vital = vital(a)
    a_fds = fd_count(a)
    c_fds = fd_count(c)
    held = exhaust(a)

    pang_thrice(a, c)

    assert leftovers(w, a, [b]) == @nothing
    assert leftovers(w, c, []) == @nothing
    assert run(c, L, :await_fd_count, [c_fds]) == []
    still_serving(a, b, vital)

    assert run(a, L, :release, []) == held
    # The attempts left no descriptor open in a either.
    assert run(a, L, :await_fd_count, [a_fds]) == []
    assert connect(a, c) == {:pong, :tube}
    assert run(c, N, :carrier, [a.node]) == :tube
    assert leftovers(w, a, [b, c]) == @nothing
    assert leftovers(w, c, [a]) == @nothing
  end

  test "a node that pings a node out of fds gets pang; neither side keeps anything of the attempts, the node out of fds runs on with its connection, and with its fds back the connection comes up over a tube",
       %{w: w, a: a, b: b, c: c} do
    vital = vital(a)
    a_fds = fd_count(a)
    c_fds = fd_count(c)
    held = exhaust(a)

    pang_thrice(c, a)

    assert leftovers(w, c, []) == @nothing
    assert run(c, L, :await_fd_count, [c_fds]) == []
    assert leftovers(w, a, [b]) == @nothing
    still_serving(a, b, vital)

    assert run(a, L, :release, []) == held
    assert run(a, L, :await_fd_count, [a_fds]) == []
    # a still accepts connections.
    assert connect(c, a) == {:pong, :tube}
    assert run(a, N, :carrier, [c.node]) == :tube
    assert leftovers(w, a, [b, c]) == @nothing
    assert leftovers(w, c, [a]) == @nothing
  end

  # A connection takes its descriptors one after another (the event socket,
  # the memfd received over it or created, the listener that hands it
  # over): with fewer free than it needs, the set-up fails part way. From no
  # descriptor free, one more is freed before each attempt until one
  # connects: each attempt before it must fail as with none free, giving
  # back what it took, and the one that connects must be a tube. Returns
  # how many descriptors were free when it connected: more than one, as
  # neither end sets a tube up with a single descriptor (a socket and a
  # memfd at least), so at least one attempt failed part way.
  defp free_one_by_one(w, a, b, c, from, to) do
    vital = vital(a)
    c_fds = fd_count(c)
    exhaust(a)
    free_one_by_one(w, a, b, c, from, to, vital, c_fds, 1)
  end

  defp free_one_by_one(w, a, b, c, from, to, vital, c_fds, free) do
    held = run(a, L, :release_one, [])
    a_fds = fd_count(a)

    case ping(from, to) do
      :pong ->
        assert run(from, N, :carrier, [to.node]) == :tube
        assert run(to, N, :carrier, [from.node]) == :tube
        assert leftovers(w, a, [b, c]) == @nothing
        assert leftovers(w, c, [a]) == @nothing
        free

      :pang ->
        assert {free, leftovers(w, a, [b])} == {free, @nothing}
        assert {free, leftovers(w, c, [])} == {free, @nothing}
        assert {free, run(a, L, :await_fd_count, [a_fds])} == {free, []}
        assert {free, run(c, L, :await_fd_count, [c_fds])} == {free, []}
        still_serving(a, b, vital)
        assert held > 0, "no connection with every descriptor a could get free"
        free_one_by_one(w, a, b, c, from, to, vital, c_fds, free + 1)
    end
  end

  test "with a few fds free, each ping from the node either connects over a tube or is pang and leaves nothing",
       %{w: w, a: a, b: b, c: c} do
    assert free_one_by_one(w, a, b, c, a, c) > 1
  end

  test "with a few fds free, each ping to the node either connects over a tube or is pang and leaves nothing",
       %{w: w, a: a, b: b, c: c} do
    assert free_one_by_one(w, a, b, c, c, a) > 1
  end

  # c offers a ring for each of a's attempts and holds its distribution
  # accept for it until a has mapped the ring; tubes other nodes open to c
  # meanwhile wait for their turn. a, with no descriptor for the event
  # socket, gives up and says so in Xenstore (state 6), and must then not
  # keep c from accepting b. c waits for a ring to be mapped far longer
  # than b's handshake deadline (open_timeout 120 s against net_setuptime's
  # 7 s), so b connects only if c lets a's dead attempt go when a says so.
  # It does not yet: c's tip waits for the ring job, which only the event
  # channel a never reached would end.
  @tag :known_failure
  @tag args: %{c: ["-tube", "open_timeout", "120000"]}
  test "a node out of fds that keeps trying to reach a tube node does not hold up other nodes' connections to it",
       %{w: w, a: a, b: b, c: c} do
    assert connect(b, c) == {:pong, :tube}
    true = run(b, :erlang, :disconnect_node, [c.node])
    assert run(b, H, :await_disconnected, [[c.node]]) == []
    assert run(c, H, :await_disconnected, [[b.node]]) == []

    vital = vital(a)
    held = exhaust(a)
    :ok = run(a, L, :start_pinging, [c.node])
    # c's tube for one of a's attempts holds c's accept, its ring offered.
    assert run(c, L, :await_tube_in, [a.domid, :connecting])
    b_connects = connect(b, c)
    c_tubes = run(c, :tube, :tubes, [])
    pings = run(a, L, :stop_pinging, [])

    assert b_connects == {:pong, :tube},
           "c's tubes when b gave up: #{inspect(c_tubes)} (a: domid #{a.domid}, b: #{b.domid})"

    assert pings != [] and Enum.all?(pings, &(&1 == :pang))
    still_serving(a, b, vital)
    assert leftovers(w, c, [b]) == @nothing
    assert run(a, L, :release, []) == held
    assert leftovers(w, a, [b]) == @nothing
  end
end
