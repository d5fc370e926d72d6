defmodule TubeControlPlaneTest do
  # The control plane under the faults a hostile world throws at it: daemon
  # restarts, stops and outages, the owner of a thousand tubes killed, a
  # paused node, Tids reopened at once, and the daemon's quotas. Each test
  # runs its nodes on a private daemon (TubeTest.CtrlWorld), so that
  # stopping or killing it touches nothing else.
  use ExUnit.Case, async: false

  alias TubeTest.{CtrlOwner, CtrlWorld, PeerNode, Remote}
  import TubeTest.Checks, only: [wait_until: 1, wait_until: 2, env_int: 2]

  @moduletag timeout: 900_000

  # How long a call that must not wait on the daemon may take before the
  # test calls it stuck: far above an answer from memory, below the 10 s a
  # Xenstore request may wait for its reply.
  @answer_bound 5_000

  # Runs m.f(a) in the peer: {:answered, result} or :no_answer.
  defp in_peer(peer, m, f, a),
    do: PeerNode.call(peer, CtrlOwner, :call_with_timeout, [m, f, a, @answer_bound], 60_000)

  defp world(daemon_args \\ nil) do
    w = CtrlWorld.new(daemon_args)
    on_exit(fn -> CtrlWorld.cleanup(w, []) end)
    w
  end

  # The process of peer's tube to domain d on Tid (in state `state`, when
  # given) in the registry's table, or nil.
  defp nock_pid(peer, d, tid, state \\ nil) do
    Enum.find_value(PeerNode.call(peer, :tube_registry, :rows, []), fn
      {{:nock, ^d, ^tid}, pid, s, _} when state in [nil, s] -> pid
      _ -> nil
    end)
  end

  test "a daemon restart gives no live node's domid to a new node, and the live nodes keep theirs" do
    w = world()
    {a, da, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    for p <- [a, b], do: :ok = PeerNode.call(p, Remote, :serve, [:echo])
    {:ok, owner} = PeerNode.call(a, Remote, :open, [db, 1, :collect, 10_000])

    # Neither A nor B may start a daemon: the gap lasts until C starts one.
    for p <- [a, b], do: CtrlWorld.set_env(p, :embedded_daemon, false)
    CtrlWorld.signal_daemon(w, "KILL")
    {c, dc, _} = CtrlWorld.peer(w)
    refute dc in [da, db], "C was given domid #{dc}, held by a live node"

    wait_until(fn ->
      CtrlWorld.exists?(w, "/local/domain/#{da}/data/tip") and CtrlWorld.exists?(w, "/local/domain/#{db}/data/tip")
    end)

    assert PeerNode.call(a, :tube, :domid, []) == da
    assert PeerNode.call(b, :tube, :domid, []) == db
    [_] = PeerNode.call(a, Remote, :send_packets, [owner, ["still here"]])
    assert PeerNode.call(a, Remote, :wait_received, [owner, 1]).packets == ["still here"]

    :ok = PeerNode.call(c, Remote, :serve, [:echo])
    assert {:ok, _} = PeerNode.call(a, Remote, :open, [dc, 2, :collect, 10_000])
    assert {:ok, _} = PeerNode.call(b, Remote, :open, [da, 3, :collect, 10_000])

    # C leaving closes none of A's tubes to B.
    PeerNode.stop(c)
    wait_until(fn -> not CtrlWorld.exists?(w, "/local/domain/#{dc}") end)
    [_] = PeerNode.call(a, Remote, :send_packets, [owner, ["after C"]])
    s = PeerNode.call(a, Remote, :wait_received, [owner, 2])
    assert s.packets == ["still here", "after C"] and s.closed == nil
  end

  test "a stopped daemon: opens answer within their timeout, info/tubes/close answer, and no transaction leaks" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(b, Remote, :serve, [:echo])
    {:ok, o1} = PeerNode.call(a, Remote, :open, [db, 1, :collect, 10_000])
    {:ok, o2} = PeerNode.call(a, Remote, :open, [db, 2, :collect, 10_000])
    t1 = PeerNode.call(a, Remote, :port, [o1])

    CtrlWorld.signal_daemon(w, "STOP")

    try do
      # More stalled opens than the daemon allows transactions per connection.
      for tid <- 100..111 do
        assert {:answered, {:error, :timeout}} = in_peer(a, :tube, :open, [db, tid, %{timeout: 300}])
      end

      assert {:answered, {:ok, %{tid: 1, state: :connected}}} = in_peer(a, :tube, :info, [t1])
      assert {:answered, tubes} = in_peer(a, :tube, :tubes, [])
      assert Enum.any?(tubes, &(&1.tid == 2))
      assert {:answered, :ok} = in_peer(a, Remote, :close, [o2])
    after
      CtrlWorld.signal_daemon(w, "CONT")
    end

    # The stalled transactions were ended: opens go on working.
    for tid <- 200..211 do
      assert {:ok, _} = PeerNode.call(a, Remote, :open, [db, tid, :collect, 10_000])
    end

    [_] = PeerNode.call(a, Remote, :send_packets, [o1, ["alive"]])
    assert PeerNode.call(a, Remote, :wait_received, [o1, 1]).packets == ["alive"]

    # Nothing is left of the opens that gave up.
    wait_until(fn ->
      CtrlWorld.children(w, "/local/domain/#{db}/data/tip/#{PeerNode.call(a, :tube, :domid, [])}")
      |> Enum.all?(&(String.to_integer(&1) in [1 | Enum.to_list(200..211)]))
    end)
  end

  test "during a daemon outage close/1 closes a healthy tube, info/1 and tubes/0 answer, and the nodes go after" do
    w = world(["--db", "DB"])
    {a, da, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(b, Remote, :serve, [:echo])
    {:ok, o1} = PeerNode.call(a, Remote, :open, [db, 1, :collect, 10_000])
    t1 = PeerNode.call(a, Remote, :port, [o1])
    wait_until(fn -> PeerNode.call(b, Remote, :served, []) == {1, 1} end)

    for p <- [a, b], do: CtrlWorld.set_env(p, :embedded_daemon, false)
    CtrlWorld.signal_daemon(w, "KILL")
    wait_until(fn -> PeerNode.call(a, :tube, :open, [db, 9, %{timeout: 200}]) == {:error, :xenstore_down} end)

    assert {:ok, %{tid: 1}} = PeerNode.call(a, :tube, :info, [t1])
    assert [%{tid: 1, state: :connected}] = PeerNode.call(a, :tube, :tubes, [])
    assert :ok = PeerNode.call(a, Remote, :close, [o1])
    assert PeerNode.call(a, :erlang, :port_info, [t1]) == :undefined
    # The peer's owner hears of it through the ring, without Xenstore.
    wait_until(fn -> PeerNode.call(b, Remote, :served, []) == {1, 0} end)

    # Back with the daemon's store as it was: the removal left undone is done.
    CtrlWorld.start_daemon(w, ["--db", CtrlWorld.db(w)])
    wait_until(fn -> CtrlWorld.exists?(w, "/local/domain/#{da}/data/tip") end)
    wait_until(fn -> not CtrlWorld.exists?(w, "/local/domain/#{da}/data/nock/#{db}/1") end)
    assert PeerNode.call(a, :tube, :tubes, []) == []
  end

  test "killing the owner of 1000 tubes removes every node, and every Tid opens again" do
    n = env_int("TUBE_CTRL_TUBES", 1000)
    w = world()
    {a, da, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(b, Remote, :serve, [:count])
    {:ok, owner, results} = PeerNode.call(a, CtrlOwner, :open_many, [db, Enum.to_list(0..(n - 1)), 30_000], 900_000)
    assert Enum.count(results, &match?({:ok, _}, &1)) == n
    wait_until(fn -> PeerNode.call(b, Remote, :served, []) == {n, n} end, 6_000)

    PeerNode.call(a, CtrlOwner, :kill, [owner])

    wait_until(
      fn ->
        CtrlWorld.children(w, "/local/domain/#{da}/data/nock") == [] and
          CtrlWorld.children(w, "/local/domain/#{db}/data/tip") == []
      end,
      12_000
    )

    wait_until(fn -> PeerNode.call(a, :tube, :tubes, []) == [] end)
    {:ok, _, again} = PeerNode.call(a, CtrlOwner, :open_many, [db, Enum.to_list(0..(n - 1)), 30_000], 900_000)
    assert Enum.reject(again, &match?({:ok, _}, &1)) == []
  end

  test "a node paused while events pile up answers at once when it resumes" do
    w = world()
    {a, da, _} = CtrlWorld.peer(w)
    {b, db, b_os} = CtrlWorld.peer(w)
    :ok = PeerNode.call(a, Remote, :serve, [:echo])

    CtrlWorld.signal(b_os, "STOP")

    try do
      :ok = PeerNode.call(a, CtrlOwner, :scribble_tips, [db, 20_000], 300_000)
    after
      CtrlWorld.signal(b_os, "CONT")
    end

    assert {:answered, {:ok, _}} = in_peer(b, Remote, :open, [da, 1, :collect, 4_000])
    assert {:answered, [_]} = in_peer(b, :tube, :tubes, [])
  end

  test "a Tid reopened right after port_close/1 or its owner's exit opens" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(b, Remote, :serve, [:count])
    assert PeerNode.call(a, CtrlOwner, :reopen_cycles, [db, 5, 200], 600_000) == []
  end

  # An open that waits for the tube closing with its Tid and gives up (its
  # timeout, its caller gone) holds nothing: the Tid opens once that tube's
  # nodes are gone.
  test "an open that gave up while waiting for a closing tube with its Tid leaves the Tid free" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(b, Remote, :serve, [:echo])
    {:ok, o1} = PeerNode.call(a, Remote, :open, [db, 1, :collect, 10_000])

    # With the daemon stopped, the closed tube cannot remove its nodes: the
    # next opens of its Tid wait for it, and give up.
    CtrlWorld.signal_daemon(w, "STOP")

    try do
      assert {:answered, :ok} = in_peer(a, Remote, :close, [o1])
      assert {:answered, {:error, :timeout}} = in_peer(a, :tube, :open, [db, 1, %{timeout: 300}])
      assert {:answered, {:error, :timeout}} = in_peer(a, :tube, :open, [db, 1, %{timeout: 0}])
    after
      CtrlWorld.signal_daemon(w, "CONT")
    end

    assert {:ok, _} = PeerNode.call(a, Remote, :open, [db, 1, :collect, 10_000])
  end

  # The caller of an open that timed out has returned before its tube
  # process has even seen the deadline; the caller's next open of that Tid
  # waits for that tube to close, as a reopen after close/1 does.
  test "an open right after a timed-out open of the same Tid is no tid_in_use" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    # A registered domain without data/tip: an open to it waits until its timeout.
    {:ok, h} = :tube_xs.open(w.socket, 0)
    {:ok, dh} = :tube_xs.introduce_self(h, :auto)
    task = Task.async(fn -> PeerNode.call(a, :tube, :open, [dh, 1, %{timeout: 1_000}], 60_000) end)

    wait_until(fn -> nock_pid(a, dh, 1) != nil end)
    pid = nock_pid(a, dh, 1)

    # Its tube process cannot handle its deadline or its caller's cancel.
    :ok = PeerNode.call(a, :sys, :suspend, [pid])
    assert Task.await(task, 60_000) == {:error, :timeout}
    assert PeerNode.call(a, :tube, :open, [dh, 1, %{timeout: 200}]) == {:error, :timeout}
    :ok = PeerNode.call(a, :sys, :resume, [pid])
    wait_until(fn -> PeerNode.call(a, :tube_registry, :rows, []) == [] end)
    :tube_xs.close(h)
  end

  # An accept() caller that gives up while the ring it offered is being
  # mapped costs the opener nothing: the opener gets its tube, and the next
  # accept() gets the other end.
  test "an accept that times out while its tube's ring is being mapped hands the tube to the next accept" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    opening = Task.async(fn -> PeerNode.call(a, Remote, :open, [db, 1, :collect, 20_000], 60_000) end)

    # Nobody accepts yet: the opener waits for the ring.
    wait_until(fn -> nock_pid(a, db, 1, :waiting) != nil end)
    pid = nock_pid(a, db, 1, :waiting)
    # The opener cannot map the ring until it is resumed: the accept gives up.
    :ok = PeerNode.call(a, :sys, :suspend, [pid])
    assert PeerNode.call(b, Remote, :accept, [:echo, 300]) == {:error, :timeout}
    :ok = PeerNode.call(a, :sys, :resume, [pid])

    assert {:ok, owner} = Task.await(opening, 60_000)
    assert {:ok, _} = PeerNode.call(b, Remote, :accept, [:echo, 10_000])
    [_] = PeerNode.call(a, Remote, :send_packets, [owner, ["through"]])
    assert PeerNode.call(a, Remote, :wait_received, [owner, 1]).packets == ["through"]
  end

  # A node is registered for a moment before it has made its data/tip (after
  # a daemon restart, every node): an open to it then is no `tid_in_use`.
  test "an open to a domain registered but without its data/tip yet waits for it within its timeout" do
    w = world()
    {a, da, _} = CtrlWorld.peer(w)
    {:ok, h} = :tube_xs.open(w.socket, 0)
    {:ok, dh} = :tube_xs.introduce_self(h, :auto)

    assert PeerNode.call(a, :tube, :open, [dh, 1, %{timeout: 300}]) == {:error, :timeout}
    refute CtrlWorld.exists?(w, "/local/domain/#{da}/data/nock/#{dh}/1")

    # Once the domain has made its data/tip, the waiting open publishes its
    # tube there; the domain then refuses it (state 6).
    task = Task.async(fn -> PeerNode.call(a, :tube, :open, [dh, 2, %{timeout: 20_000}], 60_000) end)
    wait_until(fn -> Enum.any?(PeerNode.call(a, :tube, :tubes, []), &(&1.tid == 2)) end)
    for {_, op} <- :tube_paths.setup_domain(dh), do: assert(:tube_xs.batch(h, [op]) == [:ok])
    tip = "/local/domain/#{dh}/data/tip/#{da}/2"
    wait_until(fn -> :tube_xs.read(h, tip <> "/nock") == {:ok, "/local/domain/#{da}/data/nock/#{dh}/2"} end)
    :ok = :tube_xs.write(h, tip <> "/state", "6")
    assert Task.await(task, 60_000) == {:error, :peer_closed}
    wait_until(fn -> not CtrlWorld.exists?(w, "/local/domain/#{da}/data/nock/#{dh}") end)
    :tube_xs.close(h)
  end

  test "the node quota is {:error, {:limit, :nodes}}" do
    w = world(["--quota-nodes", "40"])
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(b, Remote, :serve, [:count])
    {opened, error} = PeerNode.call(a, CtrlOwner, :open_until_error, [db, 10_000], 120_000)
    assert opened >= 1
    assert error == {:error, {:limit, :nodes}}
  end

  test "an accepting node at its watch quota refuses with {:error, {:limit, :watches}} on the opener" do
    # Each node has 3 watches of its own, and one per tube.
    w = world(["--quota-watches", "5"])
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    {c, dc, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(c, Remote, :serve, [:count])
    for tid <- 1..2, do: {:ok, _} = PeerNode.call(b, Remote, :open, [dc, tid, :collect, 10_000])

    :ok = PeerNode.call(b, Remote, :serve, [:count])
    assert {:error, {:limit, :watches}} = PeerNode.call(a, :tube, :open, [db, 7, %{timeout: 10_000}])
    assert PeerNode.call(b, Remote, :served, []) == {0, 0}
  end

  test "at its fd limit an accepting node returns no tube that cannot carry packets, and the opener gets an error" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w, [], 200)
    :ok = PeerNode.call(b, Remote, :serve, [:echo])
    {opened, error} = PeerNode.call(a, CtrlOwner, :open_until_error, [db, 10_000], 300_000)
    assert opened >= 1
    assert error == {:error, {:limit, :fds}}
    # Every tube B accepted is one A opened, and A's all carry packets.
    wait_until(fn -> PeerNode.call(b, Remote, :served, []) == {opened, opened} end)
  end

  test "node names: publish_name/1, domid/1, open/3 with a node name, peername/1" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(b, :tube_registry, :publish_name, [:"b@ctrl-test"])
    :ok = PeerNode.call(b, Remote, :serve, [:echo])
    wait_until(fn -> PeerNode.call(a, :tube, :domid, [:"b@ctrl-test"]) == {:ok, db} end)
    assert PeerNode.call(a, :tube, :domid, [:"nobody@ctrl-test"]) == {:error, :not_found}
    {:ok, name} = PeerNode.call(a, CtrlOwner, :open_named, [:"b@ctrl-test", 3])
    assert {:ok, {^db, :"b@ctrl-test"}} = PeerNode.call(a, CtrlOwner, :peername, [name])
    # The port's name says whom it links to, for observer and port_info/2.
    {:name, port_name} = PeerNode.call(a, CtrlOwner, :port_name, [name])
    assert String.ends_with?(List.to_string(port_name), " peer=#{db} tid=3")
  end

  test "stopping the application tells every owner {tube_closed, T, shutdown}" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(b, Remote, :serve, [:echo])
    owners = for tid <- 1..3, do: elem(PeerNode.call(a, Remote, :open, [db, tid, :collect, 10_000]), 1)
    :ok = PeerNode.call(a, :application, :stop, [:tube])
    for o <- owners, do: assert(PeerNode.call(a, Remote, :stats, [o]).closed == :shutdown)
  end

  test "a hostile tip entry whose ring is never mapped stalls no other tube, and accept never returns it" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)

    # A third domain, on a raw connection, offers B a tube it will never map.
    {:ok, h} = :tube_xs.open(w.socket, 0)
    {:ok, dh} = :tube_xs.introduce_self(h, :auto)
    tip = "/local/domain/#{db}/data/tip/#{dh}/1"
    nock = "/local/domain/#{dh}/data/nock/#{db}/1"

    :ok =
      :tube_xs.transaction(h, fn tx ->
        :ok = :tube_xs.mkdir(h, tx, nock)
        :ok = :tube_xs.set_perms(h, tx, nock, [{:none, dh}, {:read, db}])
        for {k, v} <- [tip: tip, state: "2"], do: :ok = :tube_xs.write(h, tx, "#{nock}/#{k}", v)
        :ok = :tube_xs.mkdir(h, tx, tip)
        :ok = :tube_xs.set_perms(h, tx, tip, [{:none, dh}, {:both, db}])

        for {k, v} <- [nock: nock, state: "0", "tx-ring-ref": "", "rx-ring-ref": "", "event-channel": ""],
            do: :ok = :tube_xs.write(h, tx, "#{tip}/#{k}", v)

        :ok
      end)

    accepts = for _ <- 1..2, do: Task.async(fn -> PeerNode.call(b, Remote, :accept, [:collect, 15_000], 60_000) end)
    # B offers the hostile tube a ring: it is stuck waiting for it.
    wait_until(fn -> CtrlWorld.xs(w, ["xenstore-read", "#{tip}/state"]) |> elem(1) =~ "3" end)

    assert {:ok, owner} = PeerNode.call(a, Remote, :open, [db, 2, :collect, 10_000])
    [_] = PeerNode.call(a, Remote, :send_packets, [owner, ["through"]])
    results = Enum.map(accepts, &Task.await(&1, 60_000))
    assert Enum.count(results, &match?({:ok, _}, &1)) == 1
    assert Enum.count(results, &(&1 == {:error, :timeout})) == 1
    {:ok, name} = Enum.find(results, &match?({:ok, _}, &1))
    assert PeerNode.call(b, Remote, :wait_received, [name, 1]).packets == ["through"]
    :tube_xs.close(h)
  end

  # Every reply a tube's process receives is taken off its requests, whatever
  # it did with the reply: a process that kept them would grow with every
  # change its peer makes to its entry, for as long as the tube lives.
  test "a tube's processes keep no answered Xenstore request" do
    w = world()
    {a, _, _} = CtrlWorld.peer(w)
    {b, db, _} = CtrlWorld.peer(w)
    :ok = PeerNode.call(b, Remote, :serve, [:count])
    for tid <- 1..10, do: assert({:ok, _} = PeerNode.call(a, Remote, :open, [db, tid, :collect, 10_000]))

    pending = fn peer ->
      for {_key, pid, _, _} <- PeerNode.call(peer, :tube_registry, :rows, []),
          {_state, %{pending: p}} = PeerNode.call(peer, :sys, :get_state, [pid]),
          do: map_size(p)
    end

    wait_until(fn -> Enum.all?(pending.(a) ++ pending.(b), &(&1 == 0)) end, 300)
    assert length(pending.(a)) == 10 and length(pending.(b)) == 10
  end
end
