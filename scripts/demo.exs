# Run through scripts/demo.sh. Uses the test support modules (a peer node
# started with OTP's :peer) and a private Xenstore socket.
dir = Path.join(System.tmp_dir!(), "tube-demo-#{System.os_time(:millisecond)}")
File.mkdir_p!(dir)
socket = Path.join(dir, "xenstored.sock")
System.put_env("XENSTORED_PATH", socket)
{:ok, _} = Application.ensure_all_started(:tube)

alias TubeTest.{PeerNode, Remote}
me = :tube.domid()
IO.puts("this node is domain #{me}; Xenstore at #{socket}")
{peer, p, os_pid} = PeerNode.start()
IO.puts("peer node (OS pid #{os_pid}) is domain #{p}")

acceptor = Task.async(fn -> PeerNode.call(peer, Remote, :accept, [:echo, 10_000]) end)
{:ok, t} = :tube.open(p, 0)
{:ok, _} = Task.await(acceptor, 15_000)
IO.puts("\ntube #{inspect(t)} open to domain #{p}; sending 3 packets, the peer echoes them")

for msg <- ["hello", "from domain #{me}", :binary.copy("x", 4096)] do
  Port.command(t, msg)

  receive do
    {^t, {:data, back}} -> IO.puts("  echoed: #{byte_size(back)} bytes #{inspect(binary_part(back, 0, min(20, byte_size(back))))}")
  after
    5_000 -> raise "no echo"
  end
end

Process.sleep(50)
IO.puts("\n$ xenstore-ls -p /local/domain")
{out, _} = System.cmd("xenstore-ls", ["-p", "/local/domain"], stderr_to_stdout: true)
IO.puts(out)
{:ok, info} = :tube.info(t)
IO.puts("tube:info -> #{inspect(info)}")

:ok = :tube.close(t)
Process.sleep(50)
IO.puts("\nafter tube:close/1:\n$ xenstore-ls /local/domain")
{out, _} = System.cmd("xenstore-ls", ["/local/domain"], stderr_to_stdout: true)
IO.puts(out)
PeerNode.stop(peer)
Application.stop(:tube)
TubeTest.Checks.signal_daemon(socket)
File.rm_rf(dir)
