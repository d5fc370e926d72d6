defmodule Tube.Bench.Cluster do
  @moduledoc false
  # The two BEAM OS processes of a bench run: this node (made distributed
  # here, and only here) and a peer started with OTP's :peer over Erlang
  # distribution, both running :tube against a private tubestored.

  defstruct [:off_heap, :peer, :node, :run_dir, :socket, :os_pid, :peer_os_pid, :domid, :peer_domid]

  @doc """
  Starts epmd, distribution, a private Xenstore daemon and the peer node.
  `off_heap`: whether bench endpoints keep their message queues off heap.
  """
  def start(off_heap) do
    run_dir = Path.join(System.tmp_dir!(), "tube-bench-#{System.os_time(:millisecond)}")
    File.mkdir_p!(run_dir)
    File.chmod!(run_dir, 0o700)
    socket = Path.join(run_dir, "xenstored.sock")
    System.put_env("XENSTORED_PATH", socket)
    ensure_distributed()
    {:ok, _} = Application.ensure_all_started(:tube)
    {peer, node} = start_peer(socket)

    %__MODULE__{
      off_heap: off_heap,
      peer: peer,
      node: node,
      run_dir: run_dir,
      socket: socket,
      os_pid: :os.getpid() |> List.to_integer(),
      peer_os_pid: :erpc.call(node, :os, :getpid, []) |> List.to_integer(),
      domid: :tube.domid(),
      peer_domid: :erpc.call(node, :tube, :domid, [])
    }
  end

  @doc "Stops the peer, the application and the private daemon."
  def stop(%__MODULE__{} = c) do
    try do
      :peer.stop(c.peer)
    catch
      _, _ -> :ok
    end

    Application.stop(:tube)

    case File.read(c.socket <> ".pid") do
      {:ok, pid} -> System.cmd("kill", [String.trim(pid)], stderr_to_stdout: true)
      _ -> :ok
    end

    File.rm_rf(c.run_dir)
    :ok
  end

  defp ensure_distributed do
    if Node.alive?() do
      :ok
    else
      epmd = System.find_executable("epmd") || Mix.raise("epmd not found (install erlang-base)")
      {_, 0} = System.cmd(epmd, ["-daemon"], stderr_to_stdout: true)
      name = :"tube_bench_#{System.os_time(:millisecond)}"
      start_net_kernel(name, 20)
    end
  end

  # epmd may need a moment after -daemon before it accepts registrations.
  defp start_net_kernel(name, tries) do
    case :net_kernel.start([name, :shortnames]) do
      {:ok, _} -> :ok
      {:error, _} when tries > 0 -> Process.sleep(100) && start_net_kernel(name, tries - 1)
      {:error, reason} -> Mix.raise("cannot start distribution: #{inspect(reason)}")
    end
  end

  defp start_peer(socket) do
    paths = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)
    cookie = Atom.to_charlist(Node.get_cookie())
    name = :"tube_bench_peer_#{System.os_time(:millisecond)}"

    {:ok, peer, node} =
      :peer.start_link(%{name: name, args: [~c"-setcookie", cookie | paths], wait_boot: 30_000})

    :ok = :erpc.call(node, :application, :set_env, [:tube, :xenstore_path, String.to_charlist(socket)])
    {:ok, _} = :erpc.call(node, :application, :ensure_all_started, [:tube], 30_000)
    {peer, node}
  end
end
