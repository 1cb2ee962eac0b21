// Types for build-wasm.mjs, so tests can import it under strict tsc.
export declare const OUTPUT: string;
export declare const VARIANTS: Record<string, string[]>;
export declare function buildWasm(): Promise<{ modules: Record<string, Uint8Array>; text: string }>;
