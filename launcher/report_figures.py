"""The report's figures (matplotlib, Agg): loss, accuracy, confusion, per-class accuracy, system use.
Each is saved as a PNG file and drawn in the page as inline SVG.

Labels are partly data (class folder names): every user string drawn goes through `drawn`, which escapes
`$` so that a class named `A$B` shows as written. Math text stays on for matplotlib's own labels (a log
axis writes its ticks as `$\\mathdefault{10^{2}}$`); switching it off for everything printed those raw.
"""
import io
from pathlib import Path

# A confusion picture with more classes than this shows no numbers in its cells (they cannot be read), and
# past LABELLED_CLASSES no class names on its axes; the most-confused-pairs table names them instead.
CELL_NUMBERS_MAX_CLASSES = 20
LABELLED_CLASSES = 40
# The per-class accuracy figure shows at most this many classes, the worst first.
PER_CLASS_SHOWN = 40


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.usetex"] = False  # never TeX: class names are data
    import matplotlib.pyplot as plt

    return plt


def drawn(text):
    """A user string as matplotlib must be given it to draw it as written (`$` escaped, so never math)."""
    return str(text).replace("$", r"\$")


def _integer_ticks(axis):
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def figure_loss(series):
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    for label, (steps, values) in series.items():
        axes.plot(steps, values, label=f"{label} loss", marker="." if label == "valid" else None,
                  linestyle="none" if label == "valid" else "-")
    axes.set(xlabel="step (all modes)", ylabel="cross-entropy loss", title="Loss per step (smdebug tensors)")
    axes.set_yscale("log")
    _integer_ticks(axes.xaxis)
    axes.legend()
    return figure


def figure_accuracy(metrics):
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    for name in ("train_acc", "valid_acc"):
        values = metrics.get(name, [])
        axes.plot(range(1, len(values) + 1), values, marker="o", label=name)
    axes.set(xlabel="epoch", ylabel="accuracy", title="Accuracy per epoch", ylim=(0, 1.02))
    _integer_ticks(axes.xaxis)
    axes.legend()
    return figure


def figure_confusion(matrix, classes):
    """Each true class's row as shares of its pictures (comparable across classes of any size); counts in the
    cells while they can be read."""
    plt = pyplot()
    shares = [[count / sum(row) if sum(row) else 0.0 for count in row] for row in matrix]
    size = min(4 + len(classes) * 0.35, 16)
    figure, axes = plt.subplots(figsize=(size, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class's pictures")
    if len(classes) <= LABELLED_CLASSES:
        names = [drawn(c) for c in classes]
        axes.set_xticks(range(len(classes)), names, rotation=90)
        axes.set_yticks(range(len(classes)), names)
    if len(classes) <= CELL_NUMBERS_MAX_CLASSES:
        for actual, row in enumerate(matrix):
            for predicted, count in enumerate(row):
                if count:
                    axes.text(predicted, actual, count, ha="center", va="center", fontsize=7,
                              color="white" if shares[actual][predicted] > 0.6 else "black")
    axes.set(xlabel="predicted", ylabel="true", title="Test confusion matrix (rows: true class, share)")
    figure.tight_layout()
    return figure


def figure_per_class(per_class, classes):
    """Per-class test accuracy, the worst classes first (at most PER_CLASS_SHOWN of them)."""
    plt = pyplot()
    order = sorted(range(len(classes)), key=lambda i: per_class[i])[:PER_CLASS_SHOWN]
    figure, axes = plt.subplots(figsize=(8, max(3, 0.22 * len(order) + 1)))
    axes.barh([drawn(classes[i]) for i in order], [per_class[i] for i in order], color="tab:green")
    shown = "" if len(order) == len(classes) else f" (the {len(order)} lowest of {len(classes)})"
    axes.set(xlabel="test accuracy", title=f"Per-class test accuracy{shown}", xlim=(0, 1))
    axes.invert_yaxis()  # the worst at the top
    figure.tight_layout()
    return figure


def figure_system(system):
    plt = pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6))
    samples = system["samples"]
    times = [s["t"] for s in samples]
    for key, label in (("cpu_percent", "CPU %"), ("memory_percent", "memory %"), ("gpu_percent", "GPU %")):
        if samples and key in samples[0]:
            top.plot(times, [s.get(key) for s in samples], label=label)
    top.set(xlabel="seconds", ylabel="%", title="System utilisation", ylim=(0, 100))
    top.legend()
    data, compute = system["steps"]["data_seconds"], system["steps"]["compute_seconds"]
    share = [d / (d + c) if d + c else 0 for d, c in zip(data, compute)]
    bottom.plot(range(1, len(share) + 1), share, color="tab:red", label="share waiting for data")
    bottom.set(xlabel="training step", ylabel="share", ylim=(0, 1), title="Share of each step spent waiting for data")
    _integer_ticks(bottom.xaxis)
    bottom.legend()
    figure.tight_layout()
    return figure


def save(figure, png_path):
    """Write the figure as PNG (a file to share) and return it as SVG markup for the page: its text stays text
    (svg.fonttype none), so the page is searchable and a browser shows exactly the labels drawn."""
    import matplotlib

    figure.savefig(png_path, format="png", dpi=100)
    buffer = io.StringIO()
    # ids salted per figure (several SVGs share the page's id space), no date: the same page for the same job
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"report-{Path(png_path).stem}"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    pyplot().close(figure)
    markup = buffer.getvalue()
    return markup[markup.index("<svg"):]
