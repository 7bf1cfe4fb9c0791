// What the example pages expose for tests and the console.
interface Window { example?: Record<string, unknown> }
