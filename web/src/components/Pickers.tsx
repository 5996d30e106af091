/**
 * The model and file drop-downs of the forms (new job, evaluation, playground): one `<select>` whose
 * options are the models by id, or the files as `name · id`, with an optional "none" first option.
 */
import type { FileObject, Model } from '../api';

interface PickerProps<T> {
  name: string;
  items: readonly T[];
  value: string;
  onChange: (value: string) => void;
  /** The label of an empty first option (no choice); without it every option is an item. */
  none?: string;
  required?: boolean;
}

function Picker<T extends { id: string }>({ name, items, value, onChange, none, required, label }: PickerProps<T> & { label: (item: T) => string }) {
  return (
    <select name={name} value={value} onChange={(e) => onChange(e.target.value)} required={required}>
      {none !== undefined && <option value="">{none}</option>}
      {items.map((item) => (
        <option key={item.id} value={item.id}>
          {label(item)}
        </option>
      ))}
    </select>
  );
}

export function ModelSelect(props: PickerProps<Model>) {
  return <Picker {...props} label={(m) => m.id} />;
}

export function FileSelect(props: PickerProps<FileObject>) {
  return <Picker {...props} label={(f) => `${f.filename} · ${f.id}`} />;
}
