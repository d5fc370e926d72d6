defmodule DistHostileTest do
  # The distribution carrier when the other side of a handshake fails or
  # lies: a wrong cookie, a peer frozen or killed while a connection to it
  # is being set up, a listener that accepts and never answers, and a
  # process that is no node writing garbage on a distribution Tid. A node
  # must refuse, close the tube, keep no tube of it, and still connect to
  # real nodes afterwards. The nodes are those of a test network (n1, n2);
  # the garbage comes from this test node, which runs tube without
  # distribution.
  use TubeTest.NetCase, async: false
  import Bitwise

  alias DistTest.Hostile, as: H
  alias TubeTest.PeerNode

  @moduletag timeout: 600_000

  # A short handshake deadline (net_setuptime, seconds) for the tests that
  # wait for one to expire.
  @setup_args ["-kernel", "net_setuptime", "2"]

  # Runs DistTest.Hostile.f(a) in node `n`.
  defp run(net, n, f, a), do: TubeNet.call(net, n, H, f, a, 120_000)

  defp node!(net, n), do: TubeNet.node(net, n)

  defp ping(net, from, to), do: TubeNet.call(net, from, :net_adm, :ping, [to], 120_000)

  defp connect(net, from, to), do: TubeNet.call(net, from, DistTest.Node, :connect, [to], 120_000)

  # Cuts the connection between n1 and n2 and waits until neither holds a
  # tube port any more: each test starts its failed attempts from there.
  defp disconnect(net) do
    [a, b] = TubeNet.nodes(net)
    :ok = TubeNet.call(net, :n1, :tube_net_agent, :disconnect, [b])
    assert run(net, :n1, :await_disconnected, [[b]]) == []
    assert run(net, :n2, :await_disconnected, [[a]]) == []
    assert run(net, :n1, :await_ports_of, [[]]) == []
    assert run(net, :n2, :await_ports_of, [[]]) == []
  end

  # n2 takes another cookie than n1's, and each pings the other in vain:
  # a handshake refused on each side. n1's cookie, to set back.
  defp refuse_by_cookie(net) do
    [a, b] = TubeNet.nodes(net)
    disconnect(net)
    cookie = TubeNet.call(net, :n1, :erlang, :get_cookie, [])
    true = TubeNet.call(net, :n2, :erlang, :set_cookie, [:"not_#{cookie}"])
    assert ping(net, :n1, b) == :pang
    assert ping(net, :n2, a) == :pang
    cookie
  end

  # The messages this process got on tube `t` until it closed: {data, reason}.
  defp until_closed(t, data \\ []) do
    receive do
      {^t, {:data, bin}} -> until_closed(t, [bin | data])
      {:tube_closed, ^t, reason} -> {Enum.reverse(data), reason}
    after
      60_000 -> {Enum.reverse(data), :still_open}
    end
  end

  # A Tid of the distribution range for a tube this test node opens.
  defp hostile_tid do
    {min, _} = H.dist_tids()
    min + rem(System.unique_integer([:positive]), 0x1_0000)
  end

  defp host(net), do: node!(net, :n1) |> Atom.to_string() |> String.split("@") |> List.last()

  # A peer node running tube without distribution, with a listener for
  # node name `name` on the distribution Tids (see DistTest.Hostile).
  defp listener(name, answers) do
    {peer, domid, _os_pid} = PeerNode.start()
    on_exit(fn -> PeerNode.stop(peer) end)
    :ok = PeerNode.call(peer, H, :start_listener, [name, answers])
    {peer, domid}
  end

  test "a wrong cookie: pang both ways, neither node lists the other, no tube port stays open, and the right cookie then connects over a tube",
       %{net: net} do
    [a, b] = TubeNet.nodes(net)
    cookie = refuse_by_cookie(net)
    refute b in TubeNet.call(net, :n1, :erlang, :nodes, [[:visible, :hidden]])
    refute a in TubeNet.call(net, :n2, :erlang, :nodes, [[:visible, :hidden]])
    assert run(net, :n1, :await_disconnected, [[b]]) == []
    assert run(net, :n2, :await_disconnected, [[a]]) == []
    assert run(net, :n1, :await_ports_of, [[]]) == []
    assert run(net, :n2, :await_ports_of, [[]]) == []

    true = TubeNet.call(net, :n2, :erlang, :set_cookie, [cookie])
    assert connect(net, :n1, b) == {:pong, :tube}
    assert TubeNet.call(net, :n2, DistTest.Node, :carrier, [a]) == :tube
    # One tube port each, the connection's.
    assert run(net, :n1, :await_ports_of, [[b]]) == []
    assert run(net, :n2, :await_ports_of, [[a]]) == []
  end

  # A refused handshake ends its process with an error. The tube's port
  # closes with it, and the tube must go from the control plane too: its
  # row, its process and its Xenstore entry. Here the refusals of both
  # sides: an accepting node refusing a wrong cookie, a name that the
  # opener's domain does not publish, or a truncated name message, and a
  # connecting node told `not_allowed` by the node it reached. Each of
  # these ends the handshake process with a reason that is not an atom; the
  # port's monitor then gets a DOWN tagged `process` instead of `port` on
  # this emulator (erts before the fix of erlang/otp#8546), which the tube's
  # process must still take for its port's end.
  @tag net: [nodes: 2, args: @setup_args]
  test "a refused handshake leaves no tube in the control plane of either side", %{net: net} do
    [a, b] = TubeNet.nodes(net)
    cookie = refuse_by_cookie(net)
    true = TubeNet.call(net, :n2, :erlang, :set_cookie, [cookie])

    d1 = TubeNet.domid(net, :n1)
    t = H.open_and_send(d1, hostile_tid(), [H.name_message(b)])
    assert {["snot_allowed"], :peer_closed} = until_closed(t)
    t = H.open_and_send(d1, hostile_tid(), [<<?N, 0, 0, 1>>])
    assert {[], :peer_closed} = until_closed(t)

    fake = :"refusing_#{System.unique_integer([:positive])}@#{host(net)}"
    {peer, fake_domid} = listener(fake, [["snot_allowed"]])
    assert ping(net, :n1, fake) == :pang
    # The listener sees its tube close a moment after the ping has returned.
    TubeTest.Checks.wait_until(fn ->
      match?(%{accepted: 1, closed: [:peer_closed]}, PeerNode.call(peer, H, :listener_report, []))
    end)

    # {role, peer domid, tid, state, port open}
    left = %{
      n1: run(net, :n1, :await_tubes_of, [[], 1000]),
      n2: run(net, :n2, :await_tubes_of, [[], 1000])
    }

    domids = %{
      n1: d1,
      n2: TubeNet.domid(net, :n2),
      test_node: :tube.domid(),
      listener: fake_domid
    }

    assert left == %{n1: [], n2: []}, "tubes left: #{inspect(left)} (domids: #{inspect(domids)})"
  end

  @tag net: [nodes: 2, args: @setup_args]
  test "a peer frozen (SIGSTOP) when asked to connect: pang, nothing left on the connecting node, and a tube connection once it runs again",
       %{net: net} do
    [a, b] = TubeNet.nodes(net)
    disconnect(net)
    :ok = TubeNet.pause(net, :n2)
    # The tube is never accepted: the attempt ends with net_setuptime.
    assert ping(net, :n1, b) == :pang
    refute b in TubeNet.call(net, :n1, :erlang, :nodes, [[:visible, :hidden]])
    assert run(net, :n1, :await_tubes_of, [[]]) == []
    assert run(net, :n1, :await_ports_of, [[]]) == []

    :ok = TubeNet.resume(net, :n2)
    # The offer it missed while frozen leaves nothing once it runs.
    assert run(net, :n2, :await_tubes_of, [[]]) == []
    assert connect(net, :n1, b) == {:pong, :tube}
    assert TubeNet.call(net, :n2, DistTest.Node, :carrier, [a]) == :tube
    assert run(net, :n1, :await_tubes_of, [[b]]) == []
    assert run(net, :n2, :await_tubes_of, [[a]]) == []
  end

  test "kill -9 of the accepting node while a connection to it is being set up: pang, the connecting node runs on and holds no tube, the restarted node connects over a tube",
       %{net: net} do
    [a, b] = TubeNet.nodes(net)
    disconnect(net)
    # Frozen first, so that the attempt is under way when the kill lands.
    :ok = TubeNet.pause(net, :n2)
    attempt = Task.async(fn -> ping(net, :n1, b) end)
    assert run(net, :n1, :await_tube_to, [TubeNet.domid(net, :n2)])
    :ok = TubeNet.kill(net, :n2)
    assert Task.await(attempt, 130_000) == :pang
    assert :ok = TubeNet.expect(net, [{:killed, :n2}, {:node_down, :n2, :killed}], 30_000)

    assert TubeNet.call(net, :n1, :erlang, :node, []) == a
    refute b in TubeNet.call(net, :n1, :erlang, :nodes, [[:visible, :hidden]])
    assert run(net, :n1, :await_tubes_of, [[]]) == []
    assert run(net, :n1, :await_ports_of, [[]]) == []

    :ok = TubeNet.restart(net, :n2)
    assert TubeNet.call(net, :n1, DistTest.Node, :carrier, [b]) == :tube
    assert run(net, :n1, :await_tubes_of, [[b]]) == []
    assert run(net, :n2, :await_tubes_of, [[a]]) == []
  end

  # The peer accepts the tube and reads the name message, then says
  # nothing (first attempt) or only `ok` to the name (second): the
  # connecting node's handshake waits for the rest until net_setuptime.
  @tag net: [nodes: 2, args: @setup_args]
  test "a listener that accepts and never completes the handshake: pang after net_setuptime, its tube closed, and real nodes connect as before",
       %{net: net} do
    [a, b] = TubeNet.nodes(net)
    fake = :"mute_#{System.unique_integer([:positive])}@#{host(net)}"
    {peer, _} = listener(fake, [[], ["sok"]])

    assert ping(net, :n1, fake) == :pang
    assert ping(net, :n1, fake) == :pang
    report = PeerNode.call(peer, H, :listener_report, [])
    assert %{accepted: 2, received: [first, second]} = report
    # Each attempt sent its name message ('N', the node's name) and nothing more.
    for msg <- [first, second] do
      assert <<?N, _flags::64, _creation::32, len::16, name::binary-size(len)>> = msg
      assert name == Atom.to_string(a)
    end

    TubeTest.Checks.wait_until(fn ->
      PeerNode.call(peer, H, :listener_report, []).closed == [:peer_closed, :peer_closed]
    end)

    refute fake in TubeNet.call(net, :n1, :erlang, :nodes, [[:visible, :hidden]])
    # Only the connection to n2, which kept working.
    assert run(net, :n1, :await_tubes_of, [[b]]) == []
    assert run(net, :n1, :await_ports_of, [[b]]) == []
    assert TubeNet.call(net, :n1, :erpc, :call, [b, :erlang, :node, []]) == b

    disconnect(net)
    assert connect(net, :n1, b) == {:pong, :tube}
  end

  # Handshake messages a node may get from a process that is no node, each
  # on a tube of its own, with what the node answers before it closes the
  # tube: a name that is not the one published for the opener's domain is
  # refused by name (`not_allowed`), anything else (a message over 64 KiB
  # too) without a word.
  @tag net: [nodes: 2, args: @setup_args]
  test "garbage on a distribution Tid: the node closes the tube, connects nothing, and keeps accepting nodes",
       %{net: net} do
    [a, b] = TubeNet.nodes(net)
    d1 = TubeNet.domid(net, :n1)
    server = TubeNet.call(net, :n1, :erlang, :whereis, [:tube_registry])

    cases = [
      {"an empty message", [<<>>], []},
      {"random bytes", [<<0>> <> :crypto.strong_rand_bytes(4095)], []},
      {"a truncated name message", [<<?N, 0, 0, 1>>], []},
      {"a name length past the end", [<<?N, 0::64, 1::32, 60_000::16, "x@y">>], []},
      {"a name without a host", [H.name_message("nohost")], []},
      {"another node's name", [H.name_message(b)], ["snot_allowed"]},
      # A handshake message is at most 64 KiB, as over TCP: a longer one is
      # refused unread.
      {"a name and 1 MiB after it", [H.name_message("x@y", :binary.copy(<<7>>, 1 <<< 20))], []},
      {"a name padded to 64 KiB", [H.name_message("x@y", :binary.copy(<<7>>, 0xFFFF - 18))],
       ["snot_allowed"]},
      {"a name, then garbage at once", [H.name_message("x@y"), "garbage"], ["snot_allowed"]},
      # Closed once net_setuptime has passed.
      {"nothing at all", [], []}
    ]

    for {what, messages, answer} <- cases do
      t = H.open_and_send(d1, hostile_tid(), messages)
      assert until_closed(t) == {answer, :peer_closed}, what
      assert TubeNet.call(net, :n1, :erlang, :nodes, [[:visible, :hidden]]) == [b], what
    end

    assert TubeNet.call(net, :n1, :erlang, :whereis, [:tube_registry]) == server
    assert run(net, :n1, :await_ports_of, [[b]]) == []
    assert TubeNet.call(net, :n1, :erpc, :call, [b, :erlang, :node, []]) == b

    disconnect(net)
    assert connect(net, :n2, a) == {:pong, :tube}
    assert TubeNet.call(net, :n1, DistTest.Node, :carrier, [b]) == :tube
  end

  # Tubes that say nothing hold a handshake process each until
  # net_setuptime (30 s here, so that they are all still there while n2
  # connects); the accept loop goes on meanwhile.
  @tag net: [nodes: 2, args: ["-kernel", "net_setuptime", "30"]]
  test "many tubes that never speak: a node still connects while they hang, and each is closed",
       %{net: net} do
    [a, b] = TubeNet.nodes(net)
    disconnect(net)
    d1 = TubeNet.domid(net, :n1)
    me = :tube.domid()
    n = 16
    tubes = for _ <- 1..n, do: H.open_and_send(d1, hostile_tid(), [])

    assert connect(net, :n2, a) == {:pong, :tube}
    held = for %{peer: ^me} <- TubeNet.call(net, :n1, :tube, :tubes, []), do: :held
    assert length(held) == n

    for t <- tubes, do: assert(until_closed(t) == {[], :peer_closed})
    assert TubeNet.call(net, :n1, :erlang, :nodes, [[:visible, :hidden]]) == [b]
    assert run(net, :n1, :await_tubes_of, [[b]]) == []
    assert run(net, :n1, :await_ports_of, [[b]]) == []
    assert TubeNet.call(net, :n1, :erpc, :call, [b, :erlang, :node, []]) == b
  end
end
