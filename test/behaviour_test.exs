defmodule TubeTest.BehaviourTest do
  # One test for each behaviour the documentation promises (README, tube.erl,
  # Tube) that the other suites do not pin down: port_close/1, passive tubes
  # whose peer leaves, credit arithmetic, the options of open/3 and accept/1,
  # the application env, info/1's byte and pid counters, trapping owners, and
  # the Elixir functions.
  use ExUnit.Case, async: false

  alias TubeTest.{PeerNode, Remote}
  import TubeTest.Checks

  setup_all do
    {peer, domid, os_pid} = PeerNode.start()
    on_exit(fn -> PeerNode.stop(peer) end)
    %{peer: peer, p: domid, peer_os_pid: os_pid}
  end

  setup do
    %{me: :tube.domid()}
  end

  defp remote_accept(peer, mode, opts \\ %{}) do
    Task.async(fn -> PeerNode.call(peer, Remote, :accept, [mode, 10_000, opts]) end)
  end

  # A tube accepted on this node by a task that hands it to the caller (its
  # owner from then on).
  defp accept_here(opts) do
    parent = self()

    Task.async(fn ->
      case :tube.accept(opts) do
        {:ok, t} ->
          true = Port.connect(t, parent)
          Process.unlink(t)
          {:ok, t}

        e ->
          e
      end
    end)
  end

  defp gone?(path), do: not exists?(path)

  test "port_close/1 closes both ends: the peer's owner is told, the nodes go, our owner gets no tube_closed",
       %{peer: peer, p: p, me: me} do
    task = remote_accept(peer, :collect)
    {:ok, t} = :tube.open(p, 60, %{timeout: 10_000})
    {:ok, name} = Task.await(task, 15_000)
    true = :erlang.port_close(t)
    s = PeerNode.call(peer, Remote, :wait_received, [name, 1_000_000, 10_000])
    assert s.closed == :peer_closed
    wait_until(fn -> gone?("/local/domain/#{me}/data/nock/#{p}/60") and gone?("/local/domain/#{p}/data/tip/#{me}/60") end)
    refute Enum.any?(:tube.tubes(), &(&1.tid == 60))
    # The owner closed it: {tube_closed, ...} is only for tubes that close by themselves.
    refute_received {:tube_closed, ^t, _}
  end

  test "a passive tube whose peer leaves closes with peer_closed without delivering what the ring held",
       %{peer: peer, p: p} do
    task = remote_accept(peer, :collect)
    {:ok, t} = :tube.open(p, 61, %{timeout: 10_000, active: false})
    {:ok, name} = Task.await(task, 15_000)
    assert [true, true, true] = PeerNode.call(peer, Remote, :send_packets, [name, ["a", "b", "c"]])
    assert %{info: %{sent: 3}} = PeerNode.call(peer, Remote, :stats, [name])
    :ok = PeerNode.call(peer, Remote, :close, [name])
    assert_receive {:tube_closed, ^t, :peer_closed}, 10_000
    refute_received {^t, {:data, _}}
    refute_received {:tube_passive, ^t}
  end

  test "a tube whose peer leaves gets what the peer sent before it left, as far as its credit goes, then peer_closed",
       %{peer: peer, p: p} do
    for {tid, active, expect} <- [{73, true, 1..20}, {74, 3, 1..3}] do
      task = remote_accept(peer, :collect)
      {:ok, t} = :tube.open(p, tid, %{timeout: 10_000, active: active})
      {:ok, name} = Task.await(task, 15_000)
      # The peer sends, then closes: a closed peer is told by the ring's
      # hang-up, which comes after its packets.
      sent = PeerNode.call(peer, Remote, :send_packets, [name, for(i <- 1..20, do: <<i>>)])
      assert Enum.all?(sent, &(&1 == true))
      :ok = PeerNode.call(peer, Remote, :close, [name])
      for i <- expect, do: assert_receive({^t, {:data, <<^i>>}}, 5_000)
      if active != true, do: assert_receive({:tube_passive, ^t}, 5_000)
      assert_receive {:tube_closed, ^t, :peer_closed}, 10_000
      refute_received {^t, {:data, _}}
    end
  end

  test "{active, N} adds N to the credit left; once sets it to one", %{peer: peer, p: p} do
    task = remote_accept(peer, :collect)
    {:ok, t} = :tube.open(p, 62, %{timeout: 10_000, active: false})
    {:ok, name} = Task.await(task, 15_000)
    # Nothing waits in the ring: 2 then 3 make a credit of 5.
    :ok = :tube.setopts(t, active: 2)
    :ok = :tube.setopts(t, active: 3)
    PeerNode.call(peer, Remote, :send_packets, [name, for(i <- 1..8, do: <<i>>)])
    for i <- 1..5, do: assert_receive({^t, {:data, <<^i>>}}, 5_000)
    assert_receive {:tube_passive, ^t}, 5_000
    assert {:ok, %{received: 5}} = :tube.info(t)
    refute_received {^t, {:data, _}}

    # 5 more: the three waiting in the ring come at once, 2 are left...
    :ok = :tube.setopts(t, active: 5)
    for i <- 6..8, do: assert_receive({^t, {:data, <<^i>>}}, 5_000)
    refute_received {:tube_passive, ^t}
    # ...and once replaces them with 1.
    :ok = :tube.setopts(t, active: :once)
    PeerNode.call(peer, Remote, :send_packets, [name, [<<9>>, <<10>>]])
    assert_receive {^t, {:data, <<9>>}}, 5_000
    assert_receive {:tube_passive, ^t}, 5_000
    assert {:ok, %{received: 9}} = :tube.info(t)
    refute_received {^t, {:data, _}}
    :ok = :tube.close(t)
  end

  test "active and busy_poll are options of accept/1 and open/3", %{peer: peer, me: me} do
    acceptor = accept_here(%{timeout: 10_000, active: 1, busy_poll: 1234})
    {:ok, opener} = PeerNode.call(peer, Remote, :open, [me, 63, :collect, 10_000, %{active: false, busy_poll: 0}])
    {:ok, t} = Task.await(acceptor, 15_000)
    assert {:ok, %{busy_poll: 1234, role: :tip}} = :tube.info(t)
    assert %{info: %{busy_poll: 0, role: :nock}} = PeerNode.call(peer, Remote, :stats, [opener])

    # Ours took one packet, then went passive.
    PeerNode.call(peer, Remote, :send_packets, [opener, ["x", "y", "z"]])
    assert_receive {^t, {:data, "x"}}, 5_000
    assert_receive {:tube_passive, ^t}, 5_000
    assert {:ok, %{received: 1}} = :tube.info(t)

    # Theirs takes nothing until its owner asks.
    for w <- ["1", "2", "3"], do: true = :erlang.port_command(t, w)
    assert %{count: 0, info: %{received: 0}} = PeerNode.call(peer, Remote, :stats, [opener])
    :ok = PeerNode.call(peer, Remote, :setopts, [opener, [active: true]])
    assert %{packets: ["1", "2", "3"]} = PeerNode.call(peer, Remote, :wait_received, [opener, 3])
    :ok = :tube.close(t)
  end

  test "info/1 counts bytes as well as packets, and names the peer's OS process",
       %{peer: peer, p: p, peer_os_pid: peer_os_pid} do
    task = remote_accept(peer, :echo)
    {:ok, t} = :tube.open(p, 64, %{timeout: 10_000})
    {:ok, name} = Task.await(task, 15_000)
    sizes = [1, 7, 100, 4095, 4096]

    for n <- sizes do
      pkt = :binary.copy(<<rem(n, 251)>>, n)
      true = :erlang.port_command(t, pkt)
      assert_receive {^t, {:data, ^pkt}}, 5_000
    end

    # Refused sizes count as rejected, not as bytes.
    true = :erlang.port_command(t, "")
    true = :erlang.port_command(t, :binary.copy("x", 4097))
    total = Enum.sum(sizes)
    {:ok, mine} = :tube.info(t)
    assert %{sent: 5, sent_bytes: ^total, received: 5, received_bytes: ^total, rejected: 2} = mine
    assert mine.peer_os_pid == peer_os_pid

    theirs = PeerNode.call(peer, Remote, :stats, [name]).info
    assert %{sent: 5, sent_bytes: ^total, received: 5, received_bytes: ^total, rejected: 0} = theirs
    assert theirs.peer_os_pid == List.to_integer(:os.getpid())
    :ok = :tube.close(t)
  end

  test "an owner that traps exits gets {'EXIT', T, normal} after tube_closed; one that does not lives on",
       %{peer: peer, p: p} do
    parent = self()

    for {tid, trap} <- [{65, true}, {66, false}] do
      task = remote_accept(peer, :collect)

      owner =
        spawn(fn ->
          Process.flag(:trap_exit, trap)
          {:ok, t} = :tube.open(p, tid, %{timeout: 10_000})
          send(parent, {:opened, self(), t})
          wait = if trap, do: 10_000, else: 0

          first =
            receive do
              m -> m
            end

          second =
            receive do
              m -> m
            after
              wait -> :nothing
            end

          send(parent, {:owner_got, self(), first, second})

          receive do
            :stop -> :ok
          end
        end)

      assert_receive {:opened, ^owner, t}, 15_000
      {:ok, name} = Task.await(task, 15_000)
      :ok = PeerNode.call(peer, Remote, :close, [name])
      assert_receive {:owner_got, ^owner, first, second}, 15_000
      assert first == {:tube_closed, t, :peer_closed}
      assert second == if(trap, do: {:EXIT, t, :normal}, else: :nothing)
      assert Process.alive?(owner)
      send(owner, :stop)
    end
  end

  describe "application env" do
    setup do
      env = Application.get_all_env(:tube)

      on_exit(fn ->
        for k <- [:busy_poll, :open_timeout] do
          case Keyword.fetch(env, k) do
            {:ok, v} -> Application.put_env(:tube, k, v)
            :error -> Application.delete_env(:tube, k)
          end
        end
      end)
    end

    test "busy_poll is the window of tubes opened or accepted without the option", %{peer: peer, p: p, me: me} do
      Application.put_env(:tube, :busy_poll, 4321)
      task = remote_accept(peer, :echo)
      {:ok, t} = :tube.open(p, 67, %{timeout: 10_000})
      {:ok, _} = Task.await(task, 15_000)
      assert {:ok, %{busy_poll: 4321}} = :tube.info(t)
      acceptor = accept_here(%{timeout: 10_000})
      {:ok, _} = PeerNode.call(peer, Remote, :open, [me, 68, :echo, 10_000])
      {:ok, a} = Task.await(acceptor, 15_000)
      assert {:ok, %{busy_poll: 4321}} = :tube.info(a)
      :ok = :tube.close(t)
      :ok = :tube.close(a)
    end

    test "open_timeout is the timeout of open/1,2 and of open/3 without the option", %{p: p} do
      # Nobody accepts on the peer: a bad value is a configuration error
      # that names the key, a good one ends the wait.
      Application.put_env(:tube, :open_timeout, :soon)
      bad_env = {:bad_application_env, :tube, :open_timeout, :soon}
      assert catch_error(:tube.open(p, 69)) == bad_env
      assert catch_error(:tube.open(p, 69, %{})) == bad_env
      assert catch_error(Tube.open(p)) == bad_env
      Application.put_env(:tube, :open_timeout, 50)
      assert {:error, :timeout} = :tube.open(p, 69)
      assert {:error, :timeout} = :tube.open(p, 69, %{active: false})
      # The option still wins over the env.
      Application.put_env(:tube, :open_timeout, :soon)
      assert {:error, :timeout} = :tube.open(p, 69, %{timeout: 50})
    end

    test "domid and xenstore_path: a node takes the domid it is given, on the daemon it is given",
         %{me: me} do
      sock = System.fetch_env!("XENSTORED_PATH")
      dir = Path.join(System.tmp_dir!(), "tube-behaviour-#{System.unique_integer([:positive])}")
      # XENSTORED_PATH names a socket nothing listens on, and no daemon may be
      # started: the node can only come up through xenstore_path. (Should one
      # start there all the same, it is stopped.)
      bogus = Path.join(dir, "socket")

      on_exit(fn ->
        signal_daemon(bogus)
        File.rm_rf(dir)
      end)

      domid = 4321

      {peer2, d2, _} =
        PeerNode.start([domid: domid, xenstore_path: sock, embedded_daemon: false], [{"XENSTORED_PATH", bogus}])

      try do
        assert d2 == domid
        assert exists?("/local/domain/#{domid}")
        refute File.exists?(bogus)
        task = Task.async(fn -> PeerNode.call(peer2, Remote, :accept, [:echo, 10_000]) end)
        {:ok, t} = :tube.open(domid, 0, %{timeout: 10_000})
        {:ok, _} = Task.await(task, 15_000)
        true = :erlang.port_command(t, "to 4321")
        assert_receive {^t, {:data, "to 4321"}}, 5_000
        assert {:ok, %{peer: ^domid}} = :tube.info(t)
        assert PeerNode.call(peer2, :tube, :tubes, []) |> Enum.map(& &1.peer) == [me]
        :ok = :tube.close(t)
      after
        PeerNode.stop(peer2)
      end

      # The daemon releases the domain of a node that has gone.
      wait_until(fn -> gone?("/local/domain/#{domid}") end)
    end
  end

  describe "io_error and internal_error" do
    # Neither can be caused from outside: the driver turns every failure of the
    # event socket into peer_closed, and internal_error is a panic caught
    # inside the driver. A build of the library with the cargo feature
    # `fault-injection` (built here into a target dir of its own, and loaded
    # by one peer node only) fails on purpose when it is given one of two
    # packets; see `fault` in native/tube_nif/src/driver.rs.
    # The first build compiles the library's dependencies again: minutes on a
    # busy machine.
    @describetag timeout: 900_000

    setup do
      so = build_fault_library!()
      dir = Path.join(System.tmp_dir!(), "tube-fault-#{System.unique_integer([:positive])}")
      ebin = Path.join([dir, "tube", "ebin"])
      priv = Path.join([dir, "tube", "priv"])
      File.mkdir_p!(priv)
      File.ln_s!(List.to_string(:code.lib_dir(:tube, :ebin)), ebin)
      File.cp!(so, Path.join(priv, "tube_nif.so"))
      File.ln_s!(Path.join(:tube_nif.lib_dir(), "tubestored"), Path.join(priv, "tubestored"))
      {peer, domid, _} = PeerNode.start([], [{"RUST_BACKTRACE", "0"}], tube_ebin: ebin)

      on_exit(fn ->
        PeerNode.stop(peer)
        File.rm_rf(dir)
      end)

      # The peer runs the fault build, this node the ordinary one.
      assert PeerNode.call(peer, :tube_nif, :lib_dir, []) |> to_string() == priv
      %{faulty: peer, fd: domid}
    end

    for {packet, reason} <- [{"tube-fault-injection:io_error", :io_error}, {"tube-fault-injection:panic", :internal_error}] do
      test "#{reason}: the owner is told {tube_closed, T, #{reason}}, the peer sees peer_closed, the node lives on",
           %{faulty: peer, fd: fd} do
        task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:collect, 10_000]) end)
        {:ok, t} = :tube.open(fd, 80, %{timeout: 10_000})
        {:ok, name} = Task.await(task, 15_000)
        # In an ordinary build the packet is a packet like any other.
        true = :erlang.port_command(t, unquote(packet))
        assert %{packets: [unquote(packet)]} = PeerNode.call(peer, Remote, :wait_received, [name, 1])

        assert [true] = PeerNode.call(peer, Remote, :send_packets, [name, [unquote(packet)]])
        s = PeerNode.call(peer, Remote, :wait_received, [name, 1_000_000, 10_000])
        assert s.closed == unquote(reason)
        assert_receive {:tube_closed, ^t, :peer_closed}, 10_000
        refute_received {^t, {:data, _}}
        # The peer's control plane forgot the tube and opens new ones.
        wait_until(fn -> PeerNode.call(peer, :tube, :tubes, []) == [] end)
        task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:echo, 10_000]) end)
        {:ok, t2} = :tube.open(fd, 81, %{timeout: 10_000})
        {:ok, _} = Task.await(task, 15_000)
        true = :erlang.port_command(t2, "after the fault")
        assert_receive {^t2, {:data, "after the fault"}}, 5_000
        :ok = :tube.close(t2)
      end
    end
  end

  # Builds tube_nif with the feature `fault-injection` into a target dir of
  # its own (the ordinary build is left alone); returns the library's path.
  defp build_fault_library! do
    cargo = System.find_executable("cargo") || Path.expand("~/.cargo/bin/cargo")
    target = Path.join(System.get_env("CARGO_TARGET_DIR") || "target", "fault-injection")
    args = ["build", "--release", "-p", "tube_nif", "--features", "fault-injection", "--target-dir", target]
    {out, status} = System.cmd(cargo, args, stderr_to_stdout: true)
    if status != 0, do: flunk("cargo #{Enum.join(args, " ")} failed:\n" <> out)
    Path.expand(Path.join([target, "release", "libtube_nif.so"]))
  end

  test "Elixir: Tube.open/1,2, Tube.accept/0,1, Tube.setopts/2", %{peer: peer, p: p, me: me} do
    task = remote_accept(peer, :echo)
    {:ok, t0} = Tube.open(p)
    {:ok, _} = Task.await(task, 15_000)
    assert {:ok, %{tid: 0, peer: ^p, role: :nock}} = Tube.info(t0)

    task = remote_accept(peer, :echo)
    {:ok, t1} = Tube.open(p, 70)
    {:ok, _} = Task.await(task, 15_000)
    assert {:ok, %{tid: 70}} = Tube.info(t1)
    assert :ok = Tube.setopts(t1, active: :once, busy_poll: 0)
    assert {:ok, %{busy_poll: 0}} = Tube.info(t1)
    Port.command(t1, "one")
    Port.command(t1, "two")
    assert_receive {^t1, {:data, "one"}}, 5_000
    assert_receive {:tube_passive, ^t1}, 5_000
    assert :ok = Tube.setopts(t1, active: true)
    assert_receive {^t1, {:data, "two"}}, 5_000
    assert_raise ArgumentError, fn -> Tube.setopts(t1, active: :sometimes) end
    assert_raise ArgumentError, fn -> Tube.setopts(:not_a_port, active: true) end

    opener = Task.async(fn -> PeerNode.call(peer, Remote, :open, [me, 71, :echo, 10_000]) end)
    {:ok, ta} = Tube.accept()
    {:ok, _} = Task.await(opener, 15_000)
    assert {:ok, %{tid: 71, peer: ^p, role: :tip}} = Tube.info(ta)

    opener = Task.async(fn -> PeerNode.call(peer, Remote, :open, [me, 72, :echo, 10_000]) end)
    {:ok, tb} = Tube.accept(%{timeout: 10_000, active: false})
    {:ok, _} = Task.await(opener, 15_000)
    assert {:ok, %{tid: 72}} = Tube.info(tb)
    assert {:error, :timeout} = Tube.accept(%{timeout: 100})
    assert_raise ArgumentError, fn -> Tube.accept(:bad) end

    for t <- [t0, t1, ta, tb], do: assert(:ok = Tube.close(t))
    assert {:error, :closed} = Tube.setopts(t1, active: true)
  end
end
