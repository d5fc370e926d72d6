defmodule TubeTest.PeerNode do
  @moduledoc false
  # A second BEAM OS process running the tube application, started with
  # OTP's :peer over standard I/O (no distribution needed).

  @doc """
  Starts a peer node with tube started; returns {peer, domid, os_pid}.
  `env` is tube's application env, set before it starts; `os_env` is
  [{name, value}] (strings) for the OS process.
  """
  def start(env \\ [], os_env \\ []) do
    paths = Enum.flat_map(:code.get_path(), fn p -> [~c"-pa", p] end)
    os_env = for {k, v} <- os_env, do: {String.to_charlist(k), String.to_charlist(v)}

    peer =
      case :peer.start_link(%{connection: :standard_io, args: paths, wait_boot: 30_000, env: os_env}) do
        {:ok, pid} -> pid
        {:ok, pid, _node} -> pid
      end

    # Loaded first: loading an application sets its env from the .app file,
    # over what was set before.
    :ok = :peer.call(peer, :application, :load, [:tube])
    for {k, v} <- env, do: :ok = :peer.call(peer, :application, :set_env, [:tube, k, v])
    {:ok, _} = :peer.call(peer, :application, :ensure_all_started, [:tube], 30_000)
    domid = :peer.call(peer, :tube, :domid, [])
    os_pid = :peer.call(peer, :os, :getpid, []) |> List.to_integer()
    {peer, domid, os_pid}
  end

  @doc "Runs fun in the peer."
  def call(peer, m, f, a, timeout \\ 30_000), do: :peer.call(peer, m, f, a, timeout)

  @doc "Stops the peer politely."
  def stop(peer) do
    try do
      :peer.stop(peer)
    catch
      _, _ -> :ok
    end
  end

  @doc "kill -9 of the peer's OS process."
  def kill9(os_pid) do
    {_, 0} = System.cmd("kill", ["-9", Integer.to_string(os_pid)])
    :ok
  end
end
