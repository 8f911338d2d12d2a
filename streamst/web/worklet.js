// AudioWorklet: down-mix every input channel to mono, convert to int16 little-endian, and post frames of
// about 40 ms to the page, which sends them as binary WebSocket messages (protocol v1, encoding pcm_s16le).
class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frameMs = (options && options.processorOptions && options.processorOptions.frameMs) || 40;
    this.frameSamples = Math.max(128, Math.round(sampleRate * frameMs / 1000));
    this.buffer = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.port.onmessage = (e) => { if (e.data === "flush") this.flush(); };
  }

  flush() {
    if (this.filled === 0) return;
    const out = this.buffer.slice(0, this.filled);
    this.port.postMessage(out.buffer, [out.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const channels = input.length;
    const n = input[0].length;
    for (let i = 0; i < n; i++) {
      let sum = 0;
      for (let c = 0; c < channels; c++) sum += input[c][i];
      let v = sum / channels;
      v = v > 1 ? 1 : v < -1 ? -1 : v;
      this.buffer[this.filled++] = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
      if (this.filled === this.frameSamples) this.flush();
    }
    return true;
  }
}

registerProcessor("streamst-capture", CaptureProcessor);
