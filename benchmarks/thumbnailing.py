"""Thumbnailing: hero + thumbnail of 24 MP JPEGs through the whole service (consume, fetch, render,
store, update, publish) against a bare loop of the same pyvips render on the same files, in the
same run, with the same number of processes.

    python -m benchmarks.thumbnailing [--images 1000] [--distinct 6] [--bare 200]

Prints images/s and CPU-ms per image for both, their ratio, and the rendering workers' peak RSS
after 100 images and at the end (the service must not grow).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

from darkroom_kit import records
from darkroom_kit.ids import new_id
from darkroom_kit.imaging import init_worker_process
from darkroom_kit.messaging import Envelope, Publisher, Topology
from darkroom_kit.mongo import open_mongo
from darkroom_kit.storage import open_object_store
from darkroom_thumbnailing.render import RenderSpec, render_variants

from benchmarks.harness import children, cpu_seconds, machine_cpu, stack_under_test, status_mb
from darkroom_dev.servers import free_port
from darkroom_dev.stack import SERVICES, start_services

PROCESSES = 2


def camera_like_jpeg(seed: int, width: int = 6000, height: int = 4000) -> bytes:
    """A 24 MP JPEG with what makes photos cost what they cost: smooth areas, edges and sensor
    noise (pure noise would cost twice as much to decode as a real photo, flat colour nothing)."""
    import pyvips

    x = pyvips.Image.xyz(width, height)
    xs, ys = x[0], x[1]
    r = (xs * (255 / width) + seed * 20) % 256
    g = (ys * (255 / height) + seed * 35) % 256
    b = ((xs + ys) * (255 / (width + height)) * 3) % 256
    base = r.bandjoin([g, b])
    # Large shapes with hard edges, as in a scene.
    rings = ((xs - width / 2) ** 2 + (ys - height / 2) ** 2) ** 0.5
    base = base + ((rings / (180 + seed * 15)).floor() % 2) * 40
    noise = pyvips.Image.gaussnoise(width, height, sigma=5 + seed)
    image = (base + noise.bandjoin([noise, noise])).cast("uchar").copy(interpretation="srgb")
    return bytes(image.jpegsave_buffer(Q=88))


def bare_loop(files: list[bytes], count: int, spec: RenderSpec) -> tuple[float, float]:
    """(images/s, CPU-ms per image) of the same render in a plain process pool."""
    with ProcessPoolExecutor(
        PROCESSES, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker_process
    ) as pool:
        list(pool.map(int, range(PROCESSES * 4)))  # start the workers outside the measurement
        workers = children(os.getpid())
        before = sum(sum(cpu_seconds(p)) for p in workers) + time.process_time()
        started = time.perf_counter()
        window = PROCESSES * 2
        futures = []
        for i in range(count):
            futures.append(pool.submit(render_variants, files[i % len(files)], spec))
            if len(futures) >= window:
                futures.pop(0).result()
        for f in futures:
            f.result()
        wall = time.perf_counter() - started
        cpu = sum(sum(cpu_seconds(p)) for p in workers) + time.process_time() - before
    return count / wall, cpu / count * 1000


async def service_run(files: list[bytes], count: int) -> dict[str, float]:
    extra = {"RENDER_PROCESSES": str(PROCESSES)}
    async with stack_under_test(extra) as stack:
        settings = stack.settings
        port = free_port(len(SERVICES))  # after the stand-ins took theirs
        async with open_object_store(settings) as store:
            await store.ensure_bucket()
            keys = [f"bench/originals/{i}.jpg" for i in range(len(files))]
            for key, data in zip(keys, files, strict=True):
                await store.put_bytes(key, data, "image/jpeg")
        mongo = open_mongo(settings)
        photos = mongo[settings.mongo_db][records.PHOTOS]
        docs = [
            {
                "_id": new_id("ph"),
                "event_id": "ev_bench",
                "event_slug": "bench",
                "filename": f"img-{i:05d}.jpg",
                "content_type": "image/jpeg",
                "kind": "image",
                "size": len(files[i % len(files)]),
                "sha256": "0" * 64,
                "original_key": keys[i % len(keys)],
                "status": "uploaded",
                "variants": {},
                "created_ms": 0,
            }
            for i in range(count)
        ]
        await photos.insert_many(docs)
        [service] = await asyncio.to_thread(
            start_services, stack.env, stack.logs, port, ["thumbnailing"]
        )
        assert service.process is not None
        pid = service.process.pid
        watch = await stack.connection.channel()
        watch_name = f"{settings.amqp_namespace}.bench.processed"
        # Exclusive: gone with the connection, whatever happens to this run.
        watched = await watch.declare_queue(watch_name, exclusive=True)
        await watched.bind(Topology(settings.amqp_namespace).events, records.PHOTO_PROCESSED)
        try:
            main_before = sum(cpu_seconds(pid))
            busy_before, idle_before = machine_cpu()
            publisher = Publisher(
                await stack.connection.channel(publisher_confirms=True, on_return_raises=True)
            )
            exchange = Topology(settings.amqp_namespace).events
            started = time.perf_counter()
            for first in range(0, count, 200):
                await asyncio.gather(
                    *(
                        publisher.publish(
                            exchange,
                            Envelope.new(
                                records.PHOTO_UPLOADED,
                                {
                                    "photo": records.photo_public(d, settings.public_base_url),
                                    "original_key": d["original_key"],
                                },
                            ),
                        )
                        for d in docs[first : first + 200]
                    )
                )
            rss_at_100: float | None = None
            done = failed_seen = 0
            last_print = last_failed_check = 0.0
            while done < count:
                await asyncio.sleep(0.25)
                # Progress from the broker (a passive declare answers the queue's length), not
                # from a MongoDB count: on the stand-in a count reads every photo, and four a
                # second cost more CPU than the service's own MongoDB work on the same 2 cores.
                processed = await watch.declare_queue(watch_name, passive=True)
                assert processed.declaration_result.message_count is not None
                if time.perf_counter() - last_failed_check > 5:
                    last_failed_check = time.perf_counter()
                    failed_seen = await photos.count_documents({"status": "failed"})
                done = processed.declaration_result.message_count + failed_seen
                workers = children(pid)
                if rss_at_100 is None and done >= 100:
                    rss_at_100 = max(status_mb(w, "VmHWM") for w in workers)
                if time.perf_counter() - last_print > 2:
                    last_print = time.perf_counter()
                    rate = done / (last_print - started)
                    print(f"  service  {done:5}/{count} images, {rate:5.2f}/s", flush=True)
            wall = time.perf_counter() - started
            busy, idle = machine_cpu()
            busy, idle = busy - busy_before, idle - idle_before
            workers = children(pid)
            worker_cpu = sum(sum(cpu_seconds(w)) for w in workers)
            main_cpu = sum(cpu_seconds(pid)) - main_before
            failed = await photos.count_documents({"status": "failed"})
            return {
                "rate": count / wall,
                "cpu_ms": (main_cpu + worker_cpu) / count * 1000,
                "main_cpu_ms": main_cpu / count * 1000,
                "worker_cpu_ms": worker_cpu / count * 1000,
                "rss_100": rss_at_100 or float("nan"),
                "rss_end": max(status_mb(w, "VmHWM") for w in workers),
                "rss_now": max(status_mb(w, "VmRSS") for w in workers),
                "failed": failed,
                "machine_cpu_ms": busy / count * 1000,
                "idle": idle / (busy + idle) * 100,
            }
        finally:
            service.process.terminate()
            service.process.wait(30)
            await mongo.drop_database(settings.mongo_db)
            await mongo.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=6)
    parser.add_argument("--bare", type=int, default=200, help="images per bare-loop run")
    args = parser.parse_args()
    print(f"making {args.distinct} camera-like 24 MP JPEGs ...", flush=True)
    files = [camera_like_jpeg(i) for i in range(args.distinct)]
    print(f"  {sum(map(len, files)) / len(files) / 1e6:.1f} MB each on average")
    spec = RenderSpec()
    print(f"bare pyvips loop, {PROCESSES} processes, {args.bare} images (before) ...", flush=True)
    bare = [bare_loop(files, args.bare, spec)]
    print(f"service, {PROCESSES} rendering processes, {args.images} images ...", flush=True)
    service = await service_run(files, args.images)
    print(f"bare pyvips loop, {args.bare} images (after) ...", flush=True)
    bare.append(bare_loop(files, args.bare, spec))
    bare_rate = sum(r for r, _ in bare) / len(bare)
    bare_cpu = sum(c for _, c in bare) / len(bare)
    print()
    print("| figure | service | bare pyvips loop | target |")
    print("|---|---|---|---|")
    print(
        f"| images/s | {service['rate']:.2f} | {bare_rate:.2f} "
        f"({bare[0][0]:.2f} before, {bare[1][0]:.2f} after) | |"
    )
    print(f"| ratio service / bare | {service['rate'] / bare_rate:.2f} | 1 | at least 0.9 |")
    print(
        f"| CPU-ms per image | {service['cpu_ms']:.0f} (event loop {service['main_cpu_ms']:.0f},"
        f" renderers {service['worker_cpu_ms']:.0f}) | {bare_cpu:.0f} | at most 250 |"
    )
    growth = (service["rss_end"] / service["rss_100"] - 1) * 100
    print(
        f"| renderer peak RSS after 100 / after {args.images} | {service['rss_100']:.0f} MB / "
        f"{service['rss_end']:.0f} MB ({growth:+.1f} %; now {service['rss_now']:.0f} MB) | "
        "| within 20 % |"
    )
    print(f"| photos failed | {service['failed']:.0f} | | 0 |")
    print(
        f"| whole machine CPU-ms per image (service, stand-ins, broker) | "
        f"{service['machine_cpu_ms']:.0f}, {service['idle']:.0f} % idle | | |"
    )


if __name__ == "__main__":
    asyncio.run(main())
