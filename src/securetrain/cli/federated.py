"""``securetrain federated``: training across sites on Flower without pooling their data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from securetrain.cli.common import (
    DataPublicKeyOption,
    KeySetOption,
    PassphraseOption,
    StoreOption,
    audit,
    console,
    err_console,
)
from securetrain.federated.config import FederatedConfig

# Options shared by `simulate` and `server`.
OutOption = Annotated[Path, typer.Option(help="Directory to write the model bundle to (new).")]
EpsilonOption = Annotated[float, typer.Option(help="Each site's privacy budget ε for this run.")]
RoundsOption = Annotated[int, typer.Option(help="Federated rounds.")]
SecaggOption = Annotated[
    bool, typer.Option("--secagg", help="SecAgg+: the server sees only the sum of updates.")
]
AggregatorOption = Annotated[
    str,
    typer.Option(
        help="auto (median; fedavg with --secagg or --client-dp), fedavg, krum, median or "
        "trimmed-mean."
    ),
]
DeltaOption = Annotated[float, typer.Option(help="δ of each site's guarantee.")]
LocalEpochsOption = Annotated[
    int | None, typer.Option(help="Passes over its data per site per round (default: 10 in all).")
]
ModelOption = Annotated[str, typer.Option(help="logreg or mlp.")]
BatchSizeOption = Annotated[
    int | None, typer.Option(help="Expected Poisson batch size at each site.")
]
LrOption = Annotated[float | None, typer.Option(help="Learning rate at the sites.")]
MaxGradNormOption = Annotated[
    float | None, typer.Option(help="Per-sample clipping bound at the sites.")
]
ClientDpOption = Annotated[
    str, typer.Option(help="Client-level DP by server-side clipping: none or fixed.")
]
ClientNoiseOption = Annotated[float, typer.Option(help="Noise multiplier of client-level DP.")]
ClientClipOption = Annotated[float, typer.Option(help="Clipping bound of each site's update.")]


def _config(options: dict[str, object], **settings: object) -> FederatedConfig:
    """The run's settings from a command's options (same names, but --key and --schema)."""
    renamed = {"key": "key_dir", "schema": "schema_path"}
    fields = {
        renamed.get(k, k): v
        for k, v in options.items()
        if renamed.get(k, k) in FederatedConfig.model_fields
    }
    return FederatedConfig.model_validate({**fields, **settings})


federated_app = typer.Typer(
    help="Federated training on Flower: secure aggregation, per-site DP, robust aggregation.",
    no_args_is_help=True,
)


@federated_app.command("simulate")
def simulate_command(
    data: Annotated[
        str, typer.Option(help="builtin:NAME, a CSV/Parquet file, or a sealed dataset.")
    ],
    out: OutOption,
    epsilon: EpsilonOption,
    sites: Annotated[int, typer.Option(help="Number of sites the data is split across.")] = 3,
    rounds: RoundsOption = 3,
    partition: Annotated[
        str, typer.Option(help="iid, or dirichlet:ALPHA for label skew across sites.")
    ] = "iid",
    secagg: SecaggOption = False,
    aggregator: AggregatorOption = "auto",
    attack: Annotated[
        str, typer.Option(help="Simulated attack: none, label-flip, sign-flip or scaling.")
    ] = "none",
    malicious: Annotated[int, typer.Option(help="How many sites attack.")] = 0,
    delta: DeltaOption = 1e-5,
    local_epochs: LocalEpochsOption = None,
    model: ModelOption = "logreg",
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    max_grad_norm: MaxGradNormOption = None,
    client_dp: ClientDpOption = "none",
    client_noise: ClientNoiseOption = 0.0,
    client_clip: ClientClipOption = 1.0,
    site_budget: Annotated[
        float | None,
        typer.Option(help="Set each simulated site's total budget ε first (not for sealed data)."),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Label column of a CSV/Parquet file.")] = None,
    schema: Annotated[
        Path | None, typer.Option(help="Schema declaring every column (needed for files).")
    ] = None,
    key: KeySetOption = None,
    passphrase_env: PassphraseOption = None,
    store: StoreOption = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed everything: reproducible, not secure.")
    ] = None,
) -> None:
    """Simulate sites on this machine (Flower's simulation engine) and write a bundle. A sealed
    dataset's own budget is charged (refused when spent) before it is decrypted."""
    from securetrain.federated.simulate import simulate

    config = _config(locals())
    if seed is not None:
        err_console.print(
            "[yellow]warning: --seed makes noise predictable (secure_rng=false on the card)[/yellow]"
        )
    console.print(
        f"federated run: {sites} sites, {rounds} rounds, {config.aggregation}"
        + (", SecAgg+" if secagg else "")
        + (f", {malicious} site(s) attacking ({attack})" if malicious else "")
    )
    result = simulate(config)
    card = result.card
    audit(
        "federated.bundle_written",
        str(result.bundle),
        {"sites": sites, "rounds": rounds, "epsilon_per_site": [s.epsilon for s in result.sites]},
        store=store,
    )
    per_site = ", ".join(f"site {s.index + 1}: ε = {s.epsilon:.3f}" for s in result.sites)
    console.print(
        f"[green]{per_site}[/green] at δ = {delta:.0e} (PLD), charged to "
        f"{escape(result.charged_to)}"
    )
    m = card.metrics
    console.print(
        f"global model: test accuracy {m.test_accuracy}, test AUC "
        f"{m.test_auc if m.test_auc is None else format(m.test_auc, '.4f')}"
    )
    console.print(
        f"bundle: {escape(str(result.bundle))}, {'signed' if card.signing else 'unsigned'}"
    )
    if card.signing is None:
        err_console.print("[yellow]warning: the bundle is not signed (give --key)[/yellow]")


@federated_app.command("init-server")
def init_server_command(
    dir: Annotated[Path, typer.Option("--dir", help="Directory to create for the TLS files.")],
    host: Annotated[
        list[str],
        typer.Option(help="Name or address sites dial (repeat for several); localhost is added."),
    ],
) -> None:
    """Create the server's TLS certificate under a fresh CA; give sites the ca.pem."""
    from securetrain.federated.pki import init_server

    names = list(dict.fromkeys([*host, "localhost", "127.0.0.1"]))
    files = init_server(dir, names)
    audit("federated.tls_created", str(dir), {"hosts": names})
    console.print(f"TLS certificate for {', '.join(names)} in {escape(str(dir))}")
    console.print(f"give every site {escape(str(files.ca))} (public); keep server.key private")


@federated_app.command("init-site")
def init_site_command(
    dir: Annotated[Path, typer.Option("--dir", help="Directory to create for the node key.")],
) -> None:
    """Create a site's node-authentication key pair; send node.pub to the server operator."""
    from securetrain.federated.pki import init_site

    files = init_site(dir)
    audit("federated.node_key_created", str(dir), {})
    console.print(
        f"node key in {escape(str(files.private_key))} (keep it private); send "
        f"{escape(str(files.public_key))} to the server operator"
    )


@federated_app.command("server")
def server_command(
    tls: Annotated[Path, typer.Option(help="The directory `federated init-server` created.")],
    site_key: Annotated[list[Path], typer.Option(help="A site's node.pub (repeat once per site).")],
    out: OutOption,
    epsilon: EpsilonOption,
    rounds: RoundsOption = 3,
    secagg: SecaggOption = False,
    aggregator: AggregatorOption = "auto",
    delta: DeltaOption = 1e-5,
    local_epochs: LocalEpochsOption = None,
    model: ModelOption = "logreg",
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    max_grad_norm: MaxGradNormOption = None,
    client_dp: ClientDpOption = "none",
    client_noise: ClientNoiseOption = 0.0,
    client_clip: ClientClipOption = 1.0,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for sites on other machines).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9092,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the sites and the run.")
    ] = 1800.0,
    flower_log: Annotated[
        Path | None, typer.Option(help="Keep the SuperLink's log in this file.")
    ] = None,
    key: KeySetOption = None,
    passphrase_env: PassphraseOption = None,
    store: StoreOption = None,
) -> None:
    """Run the federated server (Flower SuperLink): TLS, only the registered sites may join;
    train once with them and write the signed bundle."""
    from securetrain.federated.deployment import serve
    from securetrain.federated.pki import ServerFiles

    config = _config(locals(), data="federated deployment", sites=len(site_key))
    with console.status("starting the SuperLink") as status:
        result = serve(
            config,
            ServerFiles(tls),
            site_key,
            host=host,
            port=port,
            timeout=timeout,
            log=flower_log,
            progress=lambda message: status.update(escape(message)),
        )
    card = result.card
    assert card.federated is not None
    sites = card.federated["site_privacy"]
    audit(
        "federated.bundle_written",
        str(result.bundle),
        {"mode": "deployment", "run": result.run_id, "sites": sites},
        store=store,
    )
    per_site = ", ".join(f"{s['name']}: ε = {s['epsilon']:.3f}" for s in sites)
    console.print(f"[green]{per_site}[/green] at δ = {delta:.0e} (PLD), charged by each site")
    console.print(
        f"bundle: {escape(str(result.bundle))}, {'signed' if card.signing else 'unsigned'}"
    )
    if card.signing is None:
        err_console.print("[yellow]warning: the bundle is not signed (give --key)[/yellow]")


@federated_app.command("site")
def site_command(
    server: Annotated[str, typer.Option(help="The server's address, HOST:PORT.")],
    ca: Annotated[Path, typer.Option(help="The server's ca.pem (from the server operator).")],
    node_key: Annotated[Path, typer.Option(help="This site's node.key (`federated init-site`).")],
    data: Annotated[
        str,
        typer.Option(help="This site's data: a sealed dataset, a CSV/Parquet file, builtin:NAME."),
    ],
    name: Annotated[str, typer.Option(help="This site's name on the card.")] = "site",
    label: Annotated[str | None, typer.Option(help="Label column of a CSV/Parquet file.")] = None,
    schema: Annotated[
        Path | None, typer.Option(help="Schema declaring every column (needed for files).")
    ] = None,
    runtime_port: Annotated[
        int, typer.Option(help="Local port between the SuperNode and its training process.")
    ] = 9094,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a run to complete.")] = 1800.0,
    flower_log: Annotated[
        Path | None, typer.Option(help="Keep the SuperNode's log in this file.")
    ] = None,
    key: KeySetOption = None,
    data_public_key: DataPublicKeyOption = None,
    passphrase_env: PassphraseOption = None,
    store: StoreOption = None,
) -> None:
    """Join a federated run as a site (Flower SuperNode): train on this site's own data with
    DP-SGD, charged to its own budget, and exit when the run is complete."""
    from securetrain.federated.deployment import SiteOptions, join
    from securetrain.train import TrainConfig

    train = TrainConfig(
        data=data,
        label=label,
        schema_path=schema,
        key_dir=key,
        public_key=data_public_key,
        passphrase_env=passphrase_env,
        store=store,
    )
    with console.status("checking the data") as status:
        report = join(
            SiteOptions(
                server=server,
                ca=ca,
                node_key=node_key,
                train=train,
                name=name,
                runtime_port=runtime_port,
                timeout=timeout,
                log=flower_log,
            ),
            progress=lambda message: status.update(escape(message)),
        )
    audit("federated.site_completed", data, {"epsilon": report["epsilon"]}, store=store)
    console.print(
        f"[green]{escape(name)}: run complete; ε = {report['epsilon']:.3f} charged to this "
        "site's budget[/green]"
    )
