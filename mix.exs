defmodule Tube.MixProject do
  use Mix.Project

  # The application resource (description, registered names, env defaults)
  # has one source, src/tube.app.src, which rebar3 reads too.
  @app_src Path.join([__DIR__, "src", "tube.app.src"])
  @external_resource @app_src
  {:ok, [{:application, :tube, app_props}]} = :file.consult(@app_src)
  @app_props app_props

  def project do
    [
      app: :tube,
      version: to_string(@app_props[:vsn]),
      description: to_string(@app_props[:description]),
      elixir: "~> 1.14",
      # The runtime application needs kernel and stdlib only: :erlang keeps
      # Mix from adding :elixir to tube.app, so `erl -pa .../ebin` starts
      # it without Elixir. The Elixir module Tube is compiled alongside
      # for Mix users. The test build also holds the Elixir test support
      # modules, and says so.
      language: if(Mix.env() == :test, do: :elixir, else: :erlang),
      # What defmodule/def/@spec expand to in lib/tube.ex: compile-time
      # machinery of Elixir, not calls made by the running application.
      xref: [exclude: [Kernel, Kernel.Typespec, Module, :elixir_def, :elixir_module, :elixir_utils]],
      erlc_paths: ["src"],
      elixirc_paths: elixirc_paths(Mix.env()),
      erlc_options: [:debug_info, :warnings_as_errors],
      compilers: [:tube_native] ++ Mix.compilers() ++ [:tube_doc_chunks],
      start_permanent: Mix.env() == :prod,
      aliases: [test: "test --no-start"],
      deps: []
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]

  def application do
    [
      mod: @app_props[:mod],
      registered: @app_props[:registered],
      applications: @app_props[:applications],
      env: @app_props[:env]
    ]
  end
end

defmodule Mix.Tasks.Compile.TubeNative do
  @moduledoc false
  # Builds the native library and the daemon into priv/ with the script
  # rebar3 uses too; it runs cargo only when a native source changed.
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    {_, status} =
      System.cmd("sh", [Path.join([__DIR__, "scripts", "build-native.sh"])],
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0, do: Mix.raise("building the native parts failed (status #{status})")
    {:ok, []}
  end
end

defmodule Mix.Tasks.Compile.TubeDocChunks do
  @moduledoc false
  # The Erlang modules' doc chunks in the build's doc/chunks, beside ebin,
  # where code:get_doc/1 (h(tube) in erl, h :tube in iex) looks for them.
  use Mix.Task.Compiler

  @impl true
  def run(_args) do
    out = Path.join(Mix.Project.app_path(), "doc")

    {_, status} =
      System.cmd("sh", [Path.join([__DIR__, "scripts", "doc-chunks.sh"]), out],
        into: IO.stream(:stdio, :line),
        stderr_to_stdout: true
      )

    if status != 0, do: Mix.raise("writing the doc chunks failed (status #{status})")
    {:ok, []}
  end
end
