defmodule TubeBench.MixProject do
  use Mix.Project

  # The benchmark harness: its own project, so that the tube application
  # carries none of it. It uses tube from this checkout.
  def project do
    [
      app: :tube_bench,
      version: "0.1.0",
      elixir: "~> 1.14",
      elixirc_paths: ["lib"],
      deps: [{:tube, path: ".."}]
    ]
  end

  def application, do: [extra_applications: [:logger]]
end
