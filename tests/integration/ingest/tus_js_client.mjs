// One upload with the real tus-js-client (npm, the version pinned in the repo's package.json)
// in Node, driven by tests/integration/ingest/test_tus_js.py.
//
//   node tus_js_client.mjs '<json options>'
//
// Options: endpoint, token, event, path, filename, filetype, chunkSize, parallelUploads,
// source ("stream": fs.createReadStream(path), or "buffer": the file read into a Buffer),
// storage (a FileUrlStorage file: the upload's URL is kept there, and a run that finds a
// previous upload of the same file resumes it), partialMetadata (metadataForPartialUploads).
//
// Everything it says is one JSON object per line on stdout, flushed as it happens:
//   {"type":"previous","count":n}                 uploads of this file found in the storage
//   {"type":"response","method":..,"url":..,"status":..,"offset":..,"concat":..,"photo_id":..,
//    "duplicate_of":..}                          (X-Darkroom-Photo-Id, X-Darkroom-Duplicate-Of)
//   {"type":"start","offset":n,"url":..}          where the upload (not a partial) begins
//   {"type":"chunk","offset":n,"total":n,"partial":bool}  a PATCH accepted
//   {"type":"success","url":..,"photo_id":..,"duplicate_of":..}
//   {"type":"error","message":..}                 and exit status 1

import fs from 'node:fs'
import process from 'node:process'
import tus from 'tus-js-client'

const opts = JSON.parse(process.argv[2])

function say(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`)
}

function header(res, name) {
  const value = res.getHeader(name)
  return value === undefined || value === null ? null : value
}

const file = opts.source === 'buffer' ? fs.readFileSync(opts.path) : fs.createReadStream(opts.path)
let photoId = null
let duplicateOf = null
let started = false

const options = {
  endpoint: opts.endpoint,
  headers: { Authorization: `Bearer ${opts.token}` },
  metadata: { event: opts.event, filename: opts.filename, filetype: opts.filetype },
  chunkSize: opts.chunkSize,
  parallelUploads: opts.parallelUploads ?? 1,
  // The client's own retries, as shipped (a 423 while the server finishes a dead client's
  // PATCH is retried after a HEAD).
  retryDelays: [0, 500, 1000, 3000],
  onAfterResponse(req, res) {
    const concat = req.getHeader('Upload-Concat') ?? null
    const found = header(res, 'X-Darkroom-Photo-Id')
    if (found !== null) photoId = found
    const copyOf = header(res, 'X-Darkroom-Duplicate-Of')
    if (copyOf !== null) duplicateOf = copyOf
    const offset = header(res, 'Upload-Offset')
    say({
      type: 'response',
      method: req.getMethod(),
      url: req.getURL(),
      status: res.getStatus(),
      offset: offset === null ? null : Number(offset),
      concat,
      photo_id: found,
      duplicate_of: copyOf,
    })
    // The first answer about the whole upload (not a partial one): its creation, or the HEAD
    // of a resumed one, says the offset the PATCHes start from.
    const method = req.getMethod()
    if (!started && concat === null && (method === 'HEAD' || method === 'POST')) {
      if (res.getStatus() >= 200 && res.getStatus() < 300) {
        started = true
        say({ type: 'start', offset: offset === null ? 0 : Number(offset), url: req.getURL() })
      }
    }
  },
  onChunkComplete(chunkSize, bytesAccepted, bytesTotal) {
    say({ type: 'chunk', offset: bytesAccepted, total: bytesTotal, partial: opts.parallelUploads > 1 })
  },
  onSuccess() {
    say({ type: 'success', url: upload.url, photo_id: photoId, duplicate_of: duplicateOf })
  },
  onError(error) {
    say({ type: 'error', message: String(error) })
    process.exitCode = 1
  },
}
if (opts.partialMetadata) {
  options.metadataForPartialUploads = opts.partialMetadata
}
if (opts.storage) {
  options.urlStorage = new tus.FileUrlStorage(opts.storage)
  options.storeFingerprintForResuming = true
  options.removeFingerprintOnSuccess = true
}

const upload = new tus.Upload(file, options)
if (opts.storage) {
  const previous = await upload.findPreviousUploads()
  say({ type: 'previous', count: previous.length })
  if (previous.length > 0) {
    upload.resumeFromPreviousUpload(previous[0])
  }
}
upload.start()
