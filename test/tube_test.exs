defmodule TubeTest do
  # Tubes between this node and a second BEAM OS process started with :peer.
  use ExUnit.Case, async: false

  alias TubeTest.{PeerNode, Remote}
  import TubeTest.Checks

  setup do
    {peer, domid, os_pid} = PeerNode.start()
    on_exit(fn -> PeerNode.stop(peer) end)
    %{peer: peer, peer_domid: domid, peer_os_pid: os_pid, me: :tube.domid()}
  end

  defp remote_accept(peer, mode, timeout \\ 10_000) do
    Task.async(fn -> PeerNode.call(peer, Remote, :accept, [mode, timeout]) end)
  end


  defp xs_ls(path), do: xs(["xenstore-ls", "-p", path])

  test "open then accept: packets both ways, content intact", %{peer: peer, peer_domid: p} do
    task = remote_accept(peer, :echo)
    {:ok, me_owner} = Remote.open(p, 0, :collect, 10_000)
    assert {:ok, _name} = Task.await(task, 15_000)

    packets = for n <- [1, 2, 63, 64, 65, 1500, 4095, 4096], do: :crypto.strong_rand_bytes(n)
    Remote.send_packets(me_owner, packets)
    s = Remote.wait_received(me_owner, length(packets))
    assert s.packets == packets
    assert s.info.sent == length(packets)
    assert s.info.received == length(packets)
    assert s.info.role == :nock
    assert s.info.peer == p
  end

  test "accept then open: the other order connects too", %{peer: peer, me: me} do
    acceptor = Task.async(fn -> Remote.accept(:collect, 10_000) end)
    # Give the accept a head start so the order really is accept-then-open.
    Process.sleep(100)
    assert {:ok, opener} = PeerNode.call(peer, Remote, :open, [me, 7, :echo, 10_000])
    assert {:ok, mine} = Task.await(acceptor, 15_000)
    Remote.send_packets(mine, ["hello", "world"])
    s = Remote.wait_received(mine, 2)
    assert s.packets == ["hello", "world"]
    assert s.info.role == :tip
    assert s.info.tid == 7
    assert PeerNode.call(peer, Remote, :stats, [opener]).count == 2
  end

  test "a tube is a port: port_command, send/2, port_info, port_connect, port_close",
       %{peer: peer, peer_domid: p} do
    task = remote_accept(peer, :echo)
    {:ok, t} = :tube.open(p, 1, %{timeout: 10_000})
    assert {:ok, _} = Task.await(task, 15_000)
    assert is_port(t)
    assert {:name, ~c"tube_nif" ++ _} = Port.info(t, :name)
    assert {:connected, self()} == Port.info(t, :connected)

    true = :erlang.port_command(t, "one")
    assert_receive {^t, {:data, "one"}}, 5_000
    send(t, {self(), {:command, ["tw", ?o]}})
    assert_receive {^t, {:data, "two"}}, 5_000

    me = self()
    other = spawn(fn -> forward_to(me) end)
    true = Port.connect(t, other)
    Process.unlink(t)
    true = :erlang.port_command(t, "three")
    assert_receive {:other_got, {^t, {:data, "three"}}}, 5_000

    true = :erlang.port_close(t)
    refute Port.info(t)
  end

  test "xenstore-ls shows the tube and its states; close removes the nodes",
       %{peer: peer, peer_domid: p, me: me} do
    task = remote_accept(peer, :echo)
    {:ok, t} = :tube.open(p, 3, %{timeout: 10_000})
    {:ok, _} = Task.await(task, 15_000)

    # The tip answers state 4 once it sees ours: wait for it through the store.
    wait_until(fn ->
      match?({0, "4" <> _}, xs(["xenstore-read", "/local/domain/#{p}/data/tip/#{me}/3/state"]))
    end)

    {0, nock} = xs_ls("/local/domain/#{me}/data/nock/#{p}/3")
    assert nock =~ ~r/state = "4"/
    assert nock =~ "tip = \"/local/domain/#{p}/data/tip/#{me}/3\""
    {0, tip} = xs_ls("/local/domain/#{p}/data/tip/#{me}/3")
    assert tip =~ ~r/state = "4"/
    assert tip =~ "nock = \"/local/domain/#{me}/data/nock/#{p}/3\""
    assert tip =~ "event-channel"
    assert tip =~ "tx-ring-ref"
    assert tip =~ "rx-ring-ref"
    # Only the two domains concerned have access.
    assert tip =~ "(n#{me},b#{p})"

    assert :ok = :tube.close(t)
    assert {:error, :closed} = :tube.close(t)

    wait_until(fn ->
      elem(xs(["xenstore-exists", "/local/domain/#{me}/data/nock/#{p}/3"]), 0) != 0 and
        elem(xs(["xenstore-exists", "/local/domain/#{p}/data/tip/#{me}/3"]), 0) != 0
    end)
  end

  test "close/1 tells the peer's owner", %{peer: peer, peer_domid: p} do
    task = remote_accept(peer, :collect)
    {:ok, t} = :tube.open(p, 0, %{timeout: 10_000})
    {:ok, name} = Task.await(task, 15_000)
    :ok = :tube.close(t)
    s = PeerNode.call(peer, Remote, :wait_received, [name, 1_000_000, 10_000])
    assert s.closed == :peer_closed
  end

  test "the peer closing tells our owner with {tube_closed, T, peer_closed}",
       %{peer: peer, peer_domid: p} do
    task = remote_accept(peer, :echo)
    {:ok, t} = :tube.open(p, 0, %{timeout: 10_000})
    {:ok, name} = Task.await(task, 15_000)
    :ok = PeerNode.call(peer, Remote, :close, [name])
    assert_receive {:tube_closed, ^t, :peer_closed}, 5_000
    refute Port.info(t)
  end

  test "kill -9 of the peer during traffic closes the tube and says so",
       %{peer: peer, peer_domid: p, peer_os_pid: os_pid, me: me} do
    task = remote_accept(peer, :echo)
    {:ok, t} = :tube.open(p, 0, %{timeout: 10_000})
    {:ok, _} = Task.await(task, 15_000)
    sender = spawn_link(fn -> flood(t) end)
    Process.sleep(200)
    t0 = System.monotonic_time(:millisecond)
    PeerNode.kill9(os_pid)
    assert_receive {:tube_closed, ^t, reason}, 5_000
    elapsed = System.monotonic_time(:millisecond) - t0
    IO.puts("\n  kill -9 -> tube_closed(#{reason}) in #{elapsed} ms")
    assert reason in [:peer_closed, :peer_down]
    Process.unlink(sender)
    Process.exit(sender, :kill)
    # The dead domain is released: its nodes go, ours are removed too.
    wait_until(fn ->
      elem(xs(["xenstore-exists", "/local/domain/#{me}/data/nock/#{p}/0"]), 0) != 0
    end)
  end

  test "dom0 releasing the peer's domain closes the tube with peer_down",
       %{peer: peer, peer_domid: p} do
    task = remote_accept(peer, :collect)
    {:ok, t} = :tube.open(p, 0, %{timeout: 10_000})
    {:ok, name} = Task.await(task, 15_000)
    # A connection that never introduced itself has dom0's rights.
    {:ok, dom0} = :tube_xs.open(System.fetch_env!("XENSTORED_PATH"), 0)
    assert :ok = :tube_xs.release(dom0, p)
    assert_receive {:tube_closed, ^t, :peer_down}, 5_000
    s = PeerNode.call(peer, Remote, :wait_received, [name, 1_000_000, 10_000])
    assert s.closed == :peer_closed
    :tube_xs.close(dom0)
  end

  test "a Xenstore request on a closed connection answers {error, closed} at once" do
    {:ok, c} = :tube_xs.open(System.fetch_env!("XENSTORED_PATH"), 0)
    assert {:ok, _} = :tube_xs.read(c, "/local/domain")
    :ok = :tube_xs.close(c)
    assert {:error, :closed} = :tube_xs.read(c, "/local/domain")
    assert [{:error, :closed}, {:error, :closed}] =
             :tube_xs.batch(c, [{:read, 0, "/a"}, {:write, 0, "/b", "x"}])
  end

  test "the owner dying closes the tube and the peer sees it", %{peer: peer, peer_domid: p} do
    task = remote_accept(peer, :collect)
    me = self()

    owner =
      spawn(fn ->
        {:ok, t} = :tube.open(p, 0, %{timeout: 10_000})
        send(me, {:opened, t})
        receive do: (:never -> :ok)
      end)

    assert_receive {:opened, t}, 15_000
    {:ok, name} = Task.await(task, 15_000)
    Process.exit(owner, :kill)
    s = PeerNode.call(peer, Remote, :wait_received, [name, 1_000_000, 10_000])
    assert s.closed == :peer_closed
    refute Port.info(t)
  end

  test "open to a domain that never accepts times out and leaves no nodes",
       %{peer_domid: p, me: me} do
    assert {:error, :timeout} = :tube.open(p, 9, %{timeout: 300})
    assert elem(xs(["xenstore-exists", "/local/domain/#{me}/data/nock/#{p}/9"]), 0) != 0
    assert elem(xs(["xenstore-exists", "/local/domain/#{p}/data/tip/#{me}/9"]), 0) != 0
  end

  test "many tubes between two domains, told apart by Tid; a Tid in use is refused",
       %{peer: peer, peer_domid: p} do
    # The highest Tid a plain accept takes (the top 65536 are the
    # distribution carrier's).
    tids = [0, 1, 2, 42, 0xFFFEFFFF]
    tasks = for _ <- tids, do: remote_accept(peer, :echo)

    tubes =
      for tid <- tids do
        {:ok, t} = :tube.open(p, tid, %{timeout: 10_000})
        {tid, t}
      end

    for t <- tasks, do: assert({:ok, _} = Task.await(t, 15_000))
    assert {:error, :tid_in_use} = :tube.open(p, 42, %{timeout: 1_000})

    for {tid, t} <- tubes do
      :erlang.port_command(t, <<tid::32>>)
      assert_receive {^t, {:data, <<^tid::32>>}}, 5_000
      assert {:ok, %{tid: ^tid}} = :tube.info(t)
    end
  end

  test "bad input gets one documented answer each", %{peer: peer, peer_domid: p, me: me} do
    task = remote_accept(peer, :echo)
    {:ok, t} = :tube.open(p, 0, %{timeout: 10_000})
    {:ok, _} = Task.await(task, 15_000)

    # Sizes out of 1..4096: not sent, counted as rejected.
    true = :erlang.port_command(t, "")
    true = :erlang.port_command(t, :binary.copy("x", 4097))
    true = :erlang.port_command(t, "ok")
    assert_receive {^t, {:data, "ok"}}, 5_000
    {:ok, info} = :tube.info(t)
    assert info.rejected == 2
    assert info.sent == 1

    # Not iodata: badarg from the port itself.
    assert_raise ArgumentError, fn -> :erlang.port_command(t, :atom) end
    assert_raise ArgumentError, fn -> :erlang.port_command(t, [1, 2, 300]) end

    # Arguments out of range: badarg.
    assert_raise ArgumentError, fn -> :tube.open(p, -1) end
    assert_raise ArgumentError, fn -> :tube.open(p, 4_294_967_296) end
    assert_raise ArgumentError, fn -> :tube.open(-5, 0) end
    assert_raise ArgumentError, fn -> :tube.open(:foo, 0) end
    assert_raise ArgumentError, fn -> :tube.open(p, 0, %{timeout: -1}) end
    assert_raise ArgumentError, fn -> :tube.accept(:bad) end
    assert_raise ArgumentError, fn -> :tube.close(:not_a_port) end
    assert_raise ArgumentError, fn -> :tube.info(self()) end

    # Opening to ourselves or to a domain nobody registered.
    assert {:error, :self} = :tube.open(me, 0)
    assert {:error, :no_domain} = :tube.open(31_000, 0, %{timeout: 500})

    # Sending on a closed tube: badarg, as for any closed port.
    :ok = :tube.close(t)
    assert_raise ArgumentError, fn -> :erlang.port_command(t, "late") end
    assert {:error, :closed} = :tube.info(t)

    # A port that is not a tube.
    other = Port.open({:spawn, "cat"}, [:binary])
    assert {:error, :closed} = :tube.close(other)
    Port.close(other)
  end

  test "a full ring drops and counts; sent = received + dropped", %{peer: peer, peer_domid: p} do
    # The peer collects without echo; we send far more than a ring holds.
    task = remote_accept(peer, :collect)
    {:ok, owner} = Remote.open(p, 0, :collect, 10_000)
    {:ok, name} = Task.await(task, 15_000)
    n = 200_000
    :ok = Remote.send_seq(owner, n, 64)
    mine = Remote.stats(owner).info
    assert mine.sent + mine.dropped == n
    # Everything sent arrives, in order.
    theirs = PeerNode.call(peer, Remote, :wait_received, [name, mine.sent, 20_000])
    assert theirs.count == mine.sent
    seqs = for <<s::32, _::binary>> <- theirs.packets, do: s
    assert seqs == Enum.sort(seqs)
  end

  test "{active, N}: delivery stops when the owner's credit runs out, and the ring drops instead",
       %{peer: peer, peer_domid: p} do
    task = remote_accept(peer, :collect)
    {:ok, t} = :tube.open(p, 0, %{timeout: 10_000, active: :once})
    {:ok, name} = Task.await(task, 15_000)
    PeerNode.call(peer, Remote, :send_packets, [name, for(i <- 1..5, do: <<i>>)])
    assert_receive {^t, {:data, <<1>>}}, 5_000
    assert_receive {:tube_passive, ^t}, 5_000
    refute_receive {^t, {:data, _}}, 100
    assert :ok = :tube.setopts(t, active: 2)
    assert_receive {^t, {:data, <<2>>}}, 5_000
    assert_receive {^t, {:data, <<3>>}}, 5_000
    assert_receive {:tube_passive, ^t}, 5_000
    assert :ok = :tube.setopts(t, active: true)
    assert_receive {^t, {:data, <<4>>}}, 5_000
    assert_receive {^t, {:data, <<5>>}}, 5_000
    refute_receive {:tube_passive, ^t}, 100

    # Passive: a flood from the peer fills the ring and is dropped there,
    # counted by the sender; nothing reaches this mailbox.
    :ok = :tube.setopts(t, active: false)
    :ok = PeerNode.call(peer, Remote, :send_seq, [name, 50_000, 64])
    theirs = PeerNode.call(peer, Remote, :stats, [name]).info
    assert theirs.sent + theirs.dropped == 50_005
    assert theirs.dropped > 0
    refute_receive {^t, {:data, _}}, 200
    {:ok, mine} = :tube.info(t)
    assert mine.received == 5
    # Granting credit again delivers what the ring held, in order.
    :ok = :tube.setopts(t, active: 10)
    for i <- 0..9, do: assert_receive({^t, {:data, <<^i::32, _::binary>>}}, 5_000)
    assert_receive {:tube_passive, ^t}, 5_000

    assert_raise ArgumentError, fn -> :tube.setopts(t, active: 0) end
    assert_raise ArgumentError, fn -> :tube.setopts(t, active: :sometimes) end
    assert_raise ArgumentError, fn -> :tube.setopts(t, [:bogus]) end
    other = Port.open({:spawn, "cat"}, [:binary])
    assert_raise ArgumentError, fn -> :tube.setopts(other, active: true) end
    Port.close(other)
    :ok = :tube.close(t)
    assert {:error, :closed} = :tube.setopts(t, active: true)
  end

  test "busy_poll: replies are found by polling, not fd wake-ups; polling ends with traffic; 0 turns it off",
       %{peer: peer, peer_domid: p} do
    task = remote_accept(peer, :echo)
    {:ok, t} = :tube.open(p, 0, %{timeout: 10_000, busy_poll: 100_000})
    {:ok, name} = Task.await(task, 15_000)
    assert {:ok, %{busy_poll: 100_000}} = :tube.info(t)

    ping = fn n ->
      for i <- 1..n do
        true = :erlang.port_command(t, <<i::32>>)
        assert_receive {^t, {:data, <<^i::32>>}}, 5_000
      end
    end

    # The first reply wakes the tube through its fd: the peer had not
    # answered before. After that each send opens a 100 ms window and the
    # replies are found in it.
    ping.(1)
    {:ok, %{wakeups: w0}} = :tube.info(t)
    ping.(200)
    {:ok, %{wakeups: w1}} = :tube.info(t)
    assert w1 - w0 < 100
    # The window closes once no packet comes, and the tube sleeps again.
    wait_until(fn -> match?({:ok, %{polling: false}}, :tube.info(t)) end)

    # Off: every reply comes through an fd wake-up.
    :ok = :tube.setopts(t, busy_poll: 0)
    ping.(50)
    {:ok, %{wakeups: w2, polling: false, busy_poll: 0}} = :tube.info(t)
    assert w2 - w1 >= 50

    for bad <- [-1, 100_001, :fast, 1.5] do
      assert_raise ArgumentError, fn -> :tube.setopts(t, busy_poll: bad) end
      assert_raise ArgumentError, fn -> :tube.open(p, 1, %{busy_poll: bad}) end
      assert_raise ArgumentError, fn -> :tube.accept(%{busy_poll: bad}) end
    end

    # A peer that leaves while this end polls is seen through its fd as ever.
    :ok = :tube.setopts(t, busy_poll: 100_000)
    ping.(1)
    assert {:ok, %{polling: true}} = :tube.info(t)
    :ok = PeerNode.call(peer, Remote, :close, [name])
    assert_receive {:tube_closed, ^t, :peer_closed}, 5_000
  end

  test "the Elixir module mirrors :tube", %{peer: peer, peer_domid: p} do
    task = remote_accept(peer, :echo)
    {:ok, t} = Tube.open(p, 5, %{timeout: 10_000})
    {:ok, _} = Task.await(task, 15_000)
    Port.command(t, "elixir")
    assert_receive {^t, {:data, "elixir"}}, 5_000
    assert {:ok, %{peer: ^p, tid: 5, state: :connected}} = Tube.info(t)
    assert Tube.domid() == :tube.domid()
    assert Enum.any?(Tube.tubes(), &(&1.tid == 5))
    assert :ok = Tube.close(t)
  end

  defp forward_to(pid) do
    receive do
      m -> send(pid, {:other_got, m}) && forward_to(pid)
    end
  end

  defp flood(t) do
    try do
      :erlang.port_command(t, :binary.copy("z", 256))
      flood(t)
    rescue
      ArgumentError -> :closed
    end
  end

end
