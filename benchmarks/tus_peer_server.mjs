// The peer in `make bench-tus`: tus's own Node server, @tus/server with @tus/s3-store (npm,
// pinned in the repo's package.json), on the same S3 server as darkroom, as plainly configured
// as its README shows. benchmarks/tus_upload.py starts it as its own process and measures it.
//
//   node benchmarks/tus_peer_server.mjs
//
// Environment: PORT, S3_ENDPOINT_URL, S3_BUCKET (must exist), S3_ACCESS_KEY, S3_SECRET_KEY,
// S3_REGION, PART_SIZE (bytes, the preferred S3 part size; darkroom's is 8 MiB).
// Uploads are at /files/. It says one JSON line when it listens: {"listening": port}.

import process from 'node:process'
import { S3Store } from '@tus/s3-store'
import { Server } from '@tus/server'

const env = process.env
const port = Number(env.PORT)
const partSize = Number(env.PART_SIZE || 8 * 1024 * 1024)

const datastore = new S3Store({
  partSize,
  s3ClientConfig: {
    bucket: env.S3_BUCKET,
    region: env.S3_REGION || 'us-east-1',
    endpoint: env.S3_ENDPOINT_URL,
    forcePathStyle: true,
    credentials: {
      accessKeyId: env.S3_ACCESS_KEY || 'darkroom',
      secretAccessKey: env.S3_SECRET_KEY || 'darkroom-secret',
    },
  },
})

const server = new Server({ path: '/files', datastore })
const listener = server.listen({ host: '127.0.0.1', port }, () => {
  process.stdout.write(`${JSON.stringify({ listening: port })}\n`)
})

function stop() {
  listener.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
