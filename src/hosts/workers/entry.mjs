// The Worker's entry module: worker-build's bundle (index.js beside it), with the exported
// Batcher class made to derive from DurableObject, which the runtime requires before it serves
// Workers RPC to it (worker-build 0.8.7 does the same for its emscripten output only). The
// Worker calls the batcher's `accept` by RPC: see src/workers/batcher.rs.
import { DurableObject } from "cloudflare:workers";
import worker, { Batcher } from "./index.js";

Object.setPrototypeOf(Batcher.prototype, DurableObject.prototype);
Object.setPrototypeOf(Batcher, DurableObject);

export { Batcher };
export default worker;
