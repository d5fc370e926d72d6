defmodule TubeTest.PermissionsTest do
  # Who may touch what: a third domain against a tube between two others,
  # domid impersonation, ring grants, and the modes of what the daemon and
  # the rings leave on the filesystem.
  use ExUnit.Case, async: false

  import Bitwise
  alias TubeTest.{PeerNode, Remote}

  setup_all do
    {peer, domid, _} = PeerNode.start()
    on_exit(fn -> PeerNode.stop(peer) end)
    %{peer: peer, p: domid}
  end

  setup do
    %{me: :tube.domid(), sock: :tube_daemon.socket_path()}
  end

  # A Xenstore connection bound to a new domain of its own, as any local
  # process could make.
  defp third_domain(sock) do
    {:ok, c} = :tube_xs.open(sock, System.unique_integer([:positive]))
    {:ok, d} = :tube_xs.introduce_self(c, :auto)
    on_exit(fn -> :tube_xs.close(c) end)
    {c, d}
  end

  defp open_to_peer(peer, p, tid) do
    task = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:echo, 15_000]) end)
    {:ok, t} = :tube.open(p, tid, %{timeout: 15_000})
    {:ok, _} = Task.await(task, 20_000)
    t
  end

  defp assert_echo(t) do
    tag = :crypto.strong_rand_bytes(16)
    true = :erlang.port_command(t, tag)
    assert_receive {^t, {:data, ^tag}}, 5_000
  end

  test "a third domain can neither read, write, remove nor list another pair's tube nodes",
       %{peer: peer, p: p, me: me, sock: sock} do
    t = open_to_peer(peer, p, 21)
    {x, _dx} = third_domain(sock)
    nock = "/local/domain/#{me}/data/nock/#{p}/21"
    tip = "/local/domain/#{p}/data/tip/#{me}/21"
    nodes = [nock, nock <> "/state", nock <> "/tip", tip, tip <> "/nock", tip <> "/state"] ++
              for f <- ["tx-ring-ref", "rx-ring-ref", "event-channel"], do: tip <> "/" <> f

    for n <- nodes do
      assert {:error, :eacces} = :tube_xs.read(x, n), n
      assert {:error, :eacces} = :tube_xs.write(x, n, "5"), n
      assert {:error, :eacces} = :tube_xs.rm(x, n), n
      assert {:error, :eacces} = :tube_xs.directory(x, n), n
      assert {:error, :eacces} = :tube_xs.mkdir(x, n <> "/extra"), n
      assert {:error, :eacces} = :tube_xs.set_perms(x, n, [{:both, 0}]), n
    end

    # Nor list the directories above them: who talks to whom stays private.
    for dir <- ["/local/domain/#{me}/data/nock", "/local/domain/#{p}/data/tip", "/local/domain/#{p}/data/tip/#{me}"] do
      assert {:error, :eacces} = :tube_xs.directory(x, dir), dir
    end

    for dir <- ["/local/domain/#{me}/data/nock", "/local/domain/#{p}/data/tip/#{me}"] do
      assert {:error, :eacces} = :tube_xs.rm(x, dir), dir
    end

    # The tube never noticed.
    assert_echo(t)
    assert {:ok, %{state: :connected}} = :tube.info(t)
    :ok = :tube.close(t)
  end

  test "a domain cannot take a domid that is bound, nor bind twice, nor be dom0",
       %{p: p, me: me, sock: sock} do
    {:ok, c} = :tube_xs.open(sock, 1)
    on_exit(fn -> :tube_xs.close(c) end)
    assert {:error, :eexist} = :tube_xs.introduce_self(c, me)
    assert {:error, :eexist} = :tube_xs.introduce_self(c, p)
    assert {:error, :einval} = :tube_xs.introduce_self(c, 0)
    {:ok, d} = :tube_xs.introduce_self(c, :auto)
    assert d not in [0, me, p]
    assert {:error, :eisconn} = :tube_xs.introduce_self(c, :auto)
    # A bound connection no longer has dom0's rights.
    assert {:error, :eacces} = :tube_xs.write(c, "/local/domain/#{me}/name", "x")
  end

  test "a tip entry written by another domain is not taken as a tube from the domain it names",
       %{peer: peer, me: me, p: p, sock: sock} do
    {x, dx} = third_domain(sock)
    {_v, victim} = third_domain(sock)
    tid = 31
    entry = "/local/domain/#{me}/data/tip/#{victim}/#{tid}"
    # data/tip of a node lets every domain create entries (write, not read):
    # X can create one claiming to come from the victim, with the exact
    # nock path and state the tip expects...
    assert :ok = :tube_xs.write(x, entry <> "/nock", "/local/domain/#{victim}/data/nock/#{me}/#{tid}")
    assert :ok = :tube_xs.write(x, entry <> "/state", "0")
    # ...but the entry is X's, and X cannot hand it to the victim.
    assert {:ok, [{_, ^dx} | _]} = :tube_xs.get_perms(x, entry)
    assert {:error, :eperm} = :tube_xs.set_perms(x, entry, [{:none, victim}, {:both, me}])
    assert {:error, :eperm} = :tube_xs.set_perms(x, "/local/domain/#{me}/data/tip/#{victim}", [{:none, victim}])
    # A genuine tube from the peer, published after the forged entry, is the
    # first one accept/1 returns (a forged entry taken as a tube would have
    # come first), and it works.
    opener = Task.async(fn -> PeerNode.call(peer, Remote, :open, [me, tid, :echo, 15_000]) end)
    {:ok, t} = :tube.accept(%{timeout: 15_000})
    {:ok, _} = Task.await(opener, 20_000)
    assert {:ok, %{peer: ^p, tid: ^tid}} = :tube.info(t)
    assert_echo(t)
    # The tip never answered the forged entry, and nothing else waits.
    assert {:ok, "0"} = :tube_xs.read(x, entry <> "/state"), "the tip answered a forged entry"
    assert {:error, :timeout} = :tube.accept(%{timeout: 100})
    :ok = :tube.close(t)
  end

  test "a ring is mapped only with its grant" do
    {:ok, offer, evt, tx, rx} = :tube_nif.ring_offer()
    acceptor = Task.async(fn -> :tube_nif.ring_accept(offer, 10_000) end)

    flip = fn "0:" <> g -> "0:" <> flip_hex(g); "1:" <> g -> "1:" <> flip_hex(g) end
    # A wrong grant (one hex digit off) is refused; the offer keeps waiting.
    assert {:error, :denied} = :tube_nif.ring_connect(evt, flip.(tx), flip.(rx), 3_000)
    # Malformed refs and channels never reach the socket.
    for {e, t, r} <- [{evt, rx, tx}, {evt, tx, tx}, {evt, "0:", rx}, {"@tube-" <> String.duplicate("0", 32), tx, rx},
                      {"/tmp/x", tx, rx}, {evt <> "/../x", tx, rx}] do
      assert {:error, _} = :tube_nif.ring_connect(e, t, r, 1_000)
    end

    # The right grant still gets it.
    assert {:ok, conn} = :tube_nif.ring_connect(evt, tx, rx, 5_000)
    assert {:ok, acc} = Task.await(acceptor, 15_000)
    # Nothing may claim a ring twice.
    assert {:ok, id} = :tube_nif.ring_handoff(acc)
    assert_raise ArgumentError, fn -> :tube_nif.ring_handoff(acc) end
    assert :tube_nif.ring_discard(id)
    refute :tube_nif.ring_discard(id)
    {:ok, id2} = :tube_nif.ring_handoff(conn)
    assert :tube_nif.ring_discard(id2)
  end

  defp flip_hex(<<c, rest::binary>>), do: <<if(c == ?0, do: ?1, else: ?0), rest::binary>>

  test "the daemon socket is 0600 in a 0700 directory, whatever the umask" do
    exe = Path.join(:tube_nif.lib_dir(), "tubestored")
    dir = Path.join(System.tmp_dir!(), "tube-perm-#{System.unique_integer([:positive])}")
    sock = Path.join([dir, "sub", "xs.sock"])
    on_exit(fn -> File.rm_rf(dir) end)

    {_, 0} =
      System.cmd("sh", ["-c", "umask 000; exec \"$0\" --daemon --quiet --socket \"$1\" --pidfile \"$1.pid\"", exe, sock])

    pid = sock |> Kernel.<>(".pid") |> File.read!() |> String.trim()

    try do
      assert (File.stat!(Path.dirname(sock)).mode &&& 0o777) == 0o700
      assert (File.stat!(sock).mode &&& 0o777) == 0o600
      assert File.stat!(sock).type == :other
    after
      System.cmd("kill", [pid])
    end

    # The suite's own daemon too.
    s = :tube_daemon.socket_path()
    assert (File.stat!(s).mode &&& 0o777) == 0o600
  end

  test "rings live in memfds and abstract sockets: nothing in /dev/shm or the temp dirs",
       %{peer: peer, p: p} do
    before = fs_snapshot()
    t = open_to_peer(peer, p, 41)
    during = fs_snapshot()
    assert MapSet.difference(during, before) |> Enum.filter(&(&1 =~ ~r/tube|memfd|ring/)) == []
    # The region is a shared mapping of a deleted memfd, 256 KiB, not a file.
    maps = File.read!("/proc/self/maps") |> String.split("\n") |> Enum.filter(&(&1 =~ "memfd:tube"))
    assert maps != []

    for line <- maps do
      [range, perms | _] = String.split(line)
      [a, b] = range |> String.split("-") |> Enum.map(&String.to_integer(&1, 16))
      assert b - a == 256 * 1024
      assert perms == "rw-s"
      assert line =~ "(deleted)"
    end

    # The event channel is an abstract socket: '@' names only.
    unix = File.read!("/proc/net/unix")
    refute unix =~ ~r"\s/\S*tube-[0-9a-f]{32}"
    assert_echo(t)
    :ok = :tube.close(t)
  end

  # Names in /dev/shm and the temp directories, minus other suites' run dirs.
  defp fs_snapshot do
    for dir <- ["/dev/shm", System.tmp_dir!(), "/tmp"], {:ok, names} <- [File.ls(dir)],
        name <- names, not String.starts_with?(name, ["tube-test-", "tube-bench-", "tube-perm-"]),
        into: MapSet.new(),
        do: Path.join(dir, name)
  end
end
